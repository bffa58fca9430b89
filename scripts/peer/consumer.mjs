// llama.cpp as a consumer of card's GGUF exports (tests/llamacpp.rs): load the file with
// node-llama-cpp 3.21.1's prebuilt CPU binary, tokenize texts (special tokens parsed, no BOS
// added) and greedy-decode from a prompt of token ids. Prints one JSON line:
//   {"tokens": [[ids] per text], "greedy": [ids]}
// or, when llama.cpp refuses the file, {"error": "..."} with exit status 3.
//
//   node scripts/peer/consumer.mjs --model GGUF --texts JSON_ARRAY --prompt-ids 1,2,3 --new-tokens N
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

function fail(msg) {
    process.stderr.write(`consumer.mjs: ${msg}\n`);
    process.exit(2);
}

const a = {};
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
    const v = argv[i + 1] ?? fail(`${argv[i]} needs a value`);
    switch (argv[i]) {
        case "--model": a.model = v; break;
        case "--texts": a.texts = JSON.parse(v); break;
        case "--prompt-ids": a.prompt = v.split(",").map(Number); break;
        case "--new-tokens": a.newTokens = Number(v); break;
        default: fail(`unknown argument "${argv[i]}"`);
    }
}
if (!a.model || !Array.isArray(a.texts) || !a.prompt || !(a.newTokens > 0)) {
    fail("usage: --model GGUF --texts JSON_ARRAY --prompt-ids IDS --new-tokens N");
}

// build: "never": the shipped prebuilt binary, never compiled or downloaded.
const errors = [];
const llama = await getLlama({
    gpu: false, build: "never", logLevel: LlamaLogLevel.error,
    logger: (level, msg) => { if (level === LlamaLogLevel.error) errors.push(msg.trim()); },
});
let model;
try {
    model = await llama.loadModel({modelPath: a.model, gpuLayers: 0});
} catch (e) {
    console.log(JSON.stringify({error: [String(e.message || e), ...errors].join(" | ")}));
    process.exit(3);
}
const tokens = a.texts.map((t) => Array.from(model.tokenize(t, true)));
const context = await model.createContext({
    contextSize: a.prompt.length + a.newTokens + 8, sequences: 1, threads: {ideal: 1, min: 1},
});
const seq = context.getSequence();
if (a.prompt.length > 1) await seq.evaluateWithoutGeneratingNewTokens(a.prompt.slice(0, -1));
const greedy = [];
// temperature 0: argmax; yieldEogToken: go on past end-of-text, as the test's card run does.
for await (const t of seq.evaluate(a.prompt.slice(-1), {temperature: 0, yieldEogToken: true})) {
    greedy.push(t);
    if (greedy.length >= a.newTokens) break;
}
console.log(JSON.stringify({tokens, greedy}));
await context.dispose();
await model.dispose();
await llama.dispose();
