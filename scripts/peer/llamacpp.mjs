// Peer benchmark: llama.cpp through node-llama-cpp (pinned 3.21.1, prebuilt CPU binaries)
// on the same GGUF card imports. Prints one JSON line; see scripts/peer-llamacpp.sh.
//
//   node scripts/peer/llamacpp.mjs --model GGUF --threads T --greedy --prompt TEXT --new-tokens N [--lookup L]
//   node scripts/peer/llamacpp.mjs --model GGUF --threads T --cost-curve [--positions 1,2,4] [--context 64] [--reps 30]
import {statSync} from "node:fs";
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

function fail(msg) {
    process.stderr.write(`llamacpp.mjs: ${msg}\n`);
    process.exit(2);
}

function parseArgs(argv) {
    const a = {threads: null, positions: [1, 2, 3, 4, 6, 8, 12, 16], context: 64, reps: 30};
    const value = (i) => (i + 1 < argv.length ? argv[i + 1] : fail(`${argv[i]} needs a value`));
    const posInt = (s, name) => {
        if (!/^[0-9]+$/.test(s) || Number(s) < 1) fail(`${name} must be a positive integer, got "${s}"`);
        return Number(s);
    };
    for (let i = 0; i < argv.length; i++) {
        switch (argv[i]) {
            case "--model": a.model = value(i); i++; break;
            case "--threads": a.threads = posInt(value(i), "--threads"); i++; break;
            case "--greedy": a.greedy = true; break;
            case "--lookup": a.lookup = posInt(value(i), "--lookup"); i++; break;
            case "--cost-curve": a.costCurve = true; break;
            case "--prompt": a.prompt = value(i); i++; break;
            case "--new-tokens": a.newTokens = posInt(value(i), "--new-tokens"); i++; break;
            case "--positions":
                a.positions = value(i).split(",").map((s) => posInt(s.trim(), "--positions")); i++; break;
            case "--context": a.context = posInt(value(i), "--context"); i++; break;
            case "--reps": a.reps = posInt(value(i), "--reps"); i++; break;
            default: fail(`unknown argument "${argv[i]}"`);
        }
    }
    if (!a.model) fail("--model GGUF is required");
    if (a.threads == null) fail("--threads T is required");
    if (!!a.greedy === !!a.costCurve) fail("give exactly one of --greedy or --cost-curve");
    if (a.greedy && (a.prompt == null || a.newTokens == null)) fail("--greedy needs --prompt TEXT and --new-tokens N");
    try { statSync(a.model).isFile() || fail(`not a file: ${a.model}`); } catch { fail(`cannot read model ${a.model}`); }
    return a;
}

const median = (xs) => {
    const s = [...xs].sort((x, y) => x - y);
    const m = s.length >> 1;
    return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

const args = parseArgs(process.argv.slice(2));
// build: "never" — use the shipped prebuilt binary; never compile or download.
// maxThreads: 0 so the context's `threads` is the exact count used (not capped or shared).
// Debug logs only while loading, to learn which ggml CPU variant (e.g. libggml-cpu-zen4.so) was picked.
let cpuVariant = "unknown";
const llama = await getLlama({
    gpu: false, build: "never", maxThreads: 0, logLevel: LlamaLogLevel.debug,
    logger: (level, msg) => {
        const m = /loaded CPU backend from .*\/(libggml-cpu-[\w-]+)\.so/.exec(msg);
        if (m) cpuVariant = m[1];
        else if (level === LlamaLogLevel.error || level === LlamaLogLevel.fatal) process.stderr.write(msg);
    },
});
const model = await llama.loadModel({modelPath: args.model, gpuLayers: 0});
llama.logLevel = LlamaLogLevel.error;
const engine = {
    engine: "llama.cpp via node-llama-cpp 3.21.1",
    llama_cpp_release: `${llama.llamaCppRelease.repo}@${llama.llamaCppRelease.release}`,
    build: llama.buildType,
    backend: llama.gpu === false ? `cpu (${cpuVariant})` : llama.gpu,
    system_info: llama.systemInfo.trim(),
    model: model.typeDescription,
};
const ctxSize = args.greedy
    ? Math.max(512, model.tokenize(args.prompt).length + args.newTokens + 1)
    : args.context + Math.max(...args.positions) + 16;
const context = await model.createContext({
    contextSize: ctxSize, batchSize: Math.min(ctxSize, 512), sequences: 1,
    threads: {ideal: args.threads, min: args.threads},
});
const seq = context.getSequence();
const threadsUsed = context.idealThreads;

// Prompt lookup as card's verifier does it (decode/lookup.rs): the latest earlier occurrence of
// the text's last 3 (else 2) tokens, and up to L tokens that followed it, a copy that runs into
// the end going on through its own drafts. Verified here, since node-llama-cpp 3.21.1's
// InputLookupTokenPredictor accepts only the first drafted token of a batch.
function continuation(text, max) {
    for (let n = Math.min(3, text.length - 1); n >= 2; n--) {
        for (let i = text.length - n - 1; i >= 0; i--) {
            let hit = true;
            for (let j = 0; j < n && hit; j++) hit = text[i + j] === text[text.length - n + j];
            if (!hit) continue;
            const from = i + n, out = [];
            for (let k = 0; k < max; k++) out.push(from + k < text.length ? text[from + k] : out[from + k - text.length]);
            return out;
        }
    }
    return [];
}

if (args.greedy && args.lookup) {
    const prompt = model.tokenize(args.prompt);
    if (prompt.length < 2) fail("lookup needs a prompt of 2 tokens or more");
    await seq.evaluateWithoutGeneratingNewTokens(prompt.slice(0, -1));
    const item = (t) => [t, {generateNext: {token: true, options: {temperature: 0}}}];
    const text = [...prompt], out = [];
    let pending = prompt[prompt.length - 1], passes = 0;
    const t0 = process.hrtime.bigint();
    while (out.length < args.newTokens) {
        const drafts = continuation(text, Math.min(args.lookup, args.newTokens - out.length - 1));
        const res = await seq.controlledEvaluate([pending, ...drafts].map(item));
        passes++;
        let stood = 0, tok;
        for (let i = 0; i <= drafts.length; i++) {
            tok = res[i].next.token;
            out.push(tok); text.push(tok);
            if (i < drafts.length && tok === drafts[i]) { stood++; continue; }
            break;
        }
        // The cache holds the pending token and every draft: keep the drafts that stood.
        const end = seq.nextTokenIndex, keep = end - (drafts.length - stood);
        if (keep < end) await seq.eraseContextTokenRanges([{start: keep, end}]);
        pending = tok; // AR's own token: fed by the next pass
    }
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    out.length = args.newTokens;
    console.log(JSON.stringify({
        ...engine, threads: threadsUsed, lookup: args.lookup, new_tokens: out.length, passes, seconds,
        tokens_per_s: out.length / seconds, text: model.detokenize(out, true),
    }));
} else if (args.greedy) {
    const prompt = model.tokenize(args.prompt); // raw text, no chat template, no BOS (as card's --prompt)
    if (prompt.length === 0) fail("empty prompt");
    if (prompt.length + args.newTokens > ctxSize) fail(`prompt + new tokens exceed context ${ctxSize}`);
    // Prefill all but the last prompt token untimed; then each generated token costs one
    // single-token pass (the first from the last prompt token), as card's timed AR loop.
    if (prompt.length > 1) await seq.evaluateWithoutGeneratingNewTokens(prompt.slice(0, -1));
    const out = [], steps = [];
    const t0 = process.hrtime.bigint();
    let prev = t0;
    // temperature 0 = greedy argmax; yieldEogToken keeps going past <|im_end|> (card does not stop at EOS either).
    const gen = seq.evaluate(prompt.slice(-1), {temperature: 0, yieldEogToken: true});
    for await (const tok of gen) {
        const now = process.hrtime.bigint();
        steps.push(Number(now - prev) / 1e6); // per-token latency: shows the 2-core spin tail
        prev = now;
        out.push(tok);
        if (out.length >= args.newTokens) break;
    }
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    console.log(JSON.stringify({
        ...engine, threads: threadsUsed, new_tokens: out.length, seconds,
        tokens_per_s: out.length / seconds, median_token_ms: median(steps), text: model.detokenize(out, true),
    }));
} else {
    // A fixed text repeated to exactly `context` tokens, evaluated once and kept.
    const base = model.tokenize("The quick brown fox jumps over the lazy dog. Once upon a time, in a small village by the sea, ");
    const ctxTokens = [];
    while (ctxTokens.length < args.context) ctxTokens.push(...base);
    ctxTokens.length = args.context;
    await seq.evaluateWithoutGeneratingNewTokens(ctxTokens);
    const extra = base.slice(0, Math.max(...args.positions));
    while (extra.length < Math.max(...args.positions)) extra.push(base[extra.length % base.length]);
    // Logits are only computed where generateNext asks for something; `token` (greedy argmax) is the cheapest ask.
    const item = (t) => [t, {generateNext: {token: true, options: {temperature: 0}}}];
    const times = new Map(args.positions.map((n) => [n, []]));
    const once = async (n) => {
        const input = extra.slice(0, n).map(item);
        const t0 = process.hrtime.bigint();
        const res = await seq.controlledEvaluate(input);
        const ms = Number(process.hrtime.bigint() - t0) / 1e6;
        if (res.filter((r) => r?.next?.token != null).length !== n) fail(`expected ${n} logit rows`);
        await seq.eraseContextTokenRanges([{start: args.context, end: args.context + n}]); // roll back
        if (seq.nextTokenIndex !== args.context) fail(`rollback left ${seq.nextTokenIndex} tokens, want ${args.context}`);
        return ms;
    };
    for (let w = 0; w < 2; w++) for (const n of args.positions) await once(n); // warm-up
    for (let r = 0; r < args.reps; r++) for (const n of args.positions) times.get(n).push(await once(n)); // n take turns
    const base1 = median(times.get(args.positions.includes(1) ? 1 : args.positions[0]));
    console.log(JSON.stringify({
        ...engine, threads: threadsUsed, context: args.context,
        cost_curve: args.positions.map((n) => {
            const ms = median(times.get(n));
            return {positions: n, ms, ratio: ms / base1};
        }),
    }));
}
await context.dispose();
await model.dispose();
await llama.dispose();
