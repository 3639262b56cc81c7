// Run an exported student (a model folder with onnx/model.onnx) in Transformers.js under node, offline.
//
//   node classify.mjs [--pixels] <install dir> <model folder> <dtype: fp32|q8> <task> <image>...
//
// <install dir> holds node_modules/@huggingface/transformers (npm ci of this folder's package.json);
// <task> is image-classification or image-segmentation. The model is loaded from the local folder
// only (env.allowRemoteModels = false, local_files_only) by pipeline(task, folder), as a user would.
// A model type the pipeline does not know (timm_wrapper: a timm student) is loaded instead with
// AutoModel (Transformers.js's base model class) and AutoImageProcessor (its base image processor
// reads preprocessor_config.json's resize, crop and normalisation fields), wrapped in the task's
// pipeline class; "loaded_with" says which route ran.
//
// Prints one JSON line: {"transformers_js", "task", "dtype", "loaded_with", "images": [{"path",
// "logits" (flattened, without the batch axis), "shape", "top1" (index of the largest logit; per
// pixel for segmentation), "label" (classification: the pipeline's top label)}]}. --pixels adds each
// image's "pixel_values" and "pixel_shape" (the processor's output). On failure it prints
// {"error": message} and exits with status 1.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { pathToFileURL } from "node:url";

function argmax(values, start, count, stride) {
  let best = 0;
  for (let k = 1; k < count; k++) if (values[start + k * stride] > values[start + best * stride]) best = k;
  return best;
}

async function load(tjs, task, folder, dtype) {
  const options = { dtype, device: "cpu", local_files_only: true };
  // Decided from config.json, not from pipeline()'s error: pipeline() loads the model and the
  // processor concurrently, so which of the two refusals of a timm student (unknown model type,
  // unknown TimmWrapperImageProcessor) surfaces first depends on timing.
  const modelType = JSON.parse(readFileSync(path.join(folder, "config.json"), "utf8")).model_type;
  if (modelType !== "timm_wrapper") {
    return { pipe: await tjs.pipeline(task, folder, options), loadedWith: "pipeline" };
  }
  const config = await tjs.AutoConfig.from_pretrained(folder, options);
  if (!config.id2label && Array.isArray(config.label_names)) {
    config.id2label = Object.fromEntries(config.label_names.map((name, i) => [i, name]));
  }
  const model = await tjs.AutoModel.from_pretrained(folder, { ...options, config });
  const processor = await tjs.AutoImageProcessor.from_pretrained(folder, options);
  const Pipeline = task === "image-classification" ? tjs.ImageClassificationPipeline : tjs.ImageSegmentationPipeline;
  return { pipe: new Pipeline({ task, model, processor }), loadedWith: "AutoModel+AutoImageProcessor" };
}

async function main() {
  let args = process.argv.slice(2);
  const withPixels = args[0] === "--pixels";
  if (withPixels) args = args.slice(1);
  const [installDir, folder, dtype, task, ...paths] = args;
  if (!installDir || !folder || !dtype || !task || paths.length === 0) {
    throw new Error("usage: node classify.mjs [--pixels] <install dir> <model folder> <fp32|q8> <task> <image>...");
  }
  const require = createRequire(path.join(path.resolve(installDir), "package.json"));
  const tjs = await import(pathToFileURL(require.resolve("@huggingface/transformers")).href);
  tjs.env.allowRemoteModels = false;
  tjs.env.allowLocalModels = true;
  tjs.env.useFSCache = false;
  const { pipe, loadedWith } = await load(tjs, task, path.resolve(folder), dtype);
  const images = [];
  for (const imagePath of paths) {
    const image = await tjs.RawImage.read(imagePath);
    const inputs = await pipe.processor(image);
    const { logits } = await pipe.model({ pixel_values: inputs.pixel_values });
    const values = Array.from(logits.data, Number);
    const [, ...shape] = logits.dims;
    const record = { path: imagePath, logits: values, shape };
    if (shape.length === 1) {
      record.top1 = argmax(values, 0, shape[0], 1);
      record.label = (await pipe(image, { top_k: 1 }))[0].label;
    } else {
      const [classes, height, width] = shape;
      const pixels = height * width;
      record.top1 = Array.from({ length: pixels }, (_, p) => argmax(values, p, classes, pixels));
    }
    if (withPixels) {
      record.pixel_values = Array.from(inputs.pixel_values.data, Number);
      record.pixel_shape = inputs.pixel_values.dims.slice(1);
    }
    images.push(record);
  }
  const result = { transformers_js: tjs.env.version, task, dtype, loaded_with: loadedWith, images };
  process.stdout.write(JSON.stringify(result) + "\n");
}

main().catch((error) => {
  process.stdout.write(JSON.stringify({ error: String(error?.message ?? error) }) + "\n");
  process.exit(1);
});
