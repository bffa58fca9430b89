#!/usr/bin/env python3
"""Would a corpus n-gram table be a draft source worth building for the verifier?

Simulates, without a model, how often drafts would stand against SmolLM2's own greedy
continuations (what the lossless verifier accepts): prompt lookup over the text so far (as
`decode::lookup` does, n = 3 then 2), the most frequent continuation of the longest context
(n = 3..1) in a table counted over the prepared training split, and the two together
(lookup first). Also the corpus draft's acceptance by its empirical probability where lookup
has nothing to offer. Reads the continuations `card distill` wrote (corpus prefixes of 32
tokens and 96 greedy tokens each) and `card data prepare`'s token file.

    python3 scripts/corpus_ngram_drafts.py runs/smol-distill/continuations.jsonl \
        data/prepared/smollm2/train.bin
"""
import argparse
import array
import collections
import json

PREFIX = 32  # tokens of corpus text before each greedy continuation
N = 3  # the longest context looked up


def lookup(ctx, most):
    """Up to `most` tokens after the latest earlier occurrence of the last 3 (else 2) tokens."""
    for n in (3, 2):
        tail = ctx[-n:]
        for start in range(len(ctx) - n - 1, -1, -1):
            if ctx[start : start + n] == tail:
                return ctx[start + n : start + n + most]
    return []


def table(tokens):
    """Per context length n: context -> (likeliest next token, its count, all counts)."""
    out = [None]
    for n in range(1, N + 1):
        counts = collections.defaultdict(collections.Counter)
        for i in range(n, len(tokens)):
            counts[tuple(tokens[i - n : i])][tokens[i]] += 1
        out.append({k: (*c.most_common(1)[0], sum(c.values())) for k, c in counts.items()})
    return out


def corpus_next(best, ctx, least=2):
    """The likeliest next token of the longest context seen at least `least` times."""
    for n in range(N, 0, -1):
        hit = best[n].get(tuple(ctx[-n:])) if len(ctx) >= n else None
        if hit and hit[2] >= least:
            return hit[0], hit[1] / hit[2]
    return None


def drafts(best, ctx, most, source):
    out = lookup(ctx, most) if source in ("lookup", "both") else []
    if not out and source in ("corpus", "both"):
        grown = list(ctx)
        while len(out) < most and (hit := corpus_next(best, grown)):
            out.append(hit[0])
            grown.append(hit[0])
    return out


def run(rows, best, most, source):
    """Tokens committed per pass with up to `most` drafts a pass, and first-draft acceptance."""
    passes = accepted = tried = first = 0
    for row in rows:
        i = PREFIX + N  # the first contexts lie wholly in the corpus text: skip them
        while i < len(row):
            d = drafts(best, row[:i], most, source)
            stood = 0
            while stood < len(d) and i + stood < len(row) and row[i + stood] == d[stood]:
                stood += 1
            tried += bool(d)
            first += stood > 0
            passes += 1
            accepted += stood
            i += stood + 1
    return (accepted + passes) / passes, tried / passes, first / max(tried, 1)


def by_probability(rows, best):
    """Where lookup offers nothing: the corpus draft's acceptance by its probability."""
    seen, hits, open_ = collections.Counter(), collections.Counter(), 0
    for row in rows:
        for i in range(PREFIX + N, len(row)):
            ctx = row[:i]
            if lookup(ctx, 1):
                continue
            open_ += 1
            hit = corpus_next(best, ctx, least=3)
            if hit:
                b = min(int(hit[1] * 10), 9)
                seen[b] += 1
                hits[b] += hit[0] == row[i]
    return [(b / 10, seen[b] / open_, hits[b] / max(seen[b], 1)) for b in range(10)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("continuations")
    ap.add_argument("train_bin")
    a = ap.parse_args()
    rows = [r for line in open(a.continuations) for r in json.loads(line)["rows"]]
    tokens = array.array("H")
    tokens.frombytes(open(a.train_bin, "rb").read())
    best = table(tokens.tolist())
    print(f"{len(rows)} greedy rows, table over {len(tokens)} corpus tokens")
    for most in (1, 2, 4):
        for source in ("corpus", "lookup", "both"):
            tpp, share, acc = run(rows, best, most, source)
            print(
                f"L={most} {source:7s} tokens/pass {tpp:.3f}  passes with a draft {share:.2f}"
                f"  first draft stands {acc:.3f}"
            )
    for lo, share, acc in by_probability(rows, best):
        print(
            f"no lookup draft, corpus p in [{lo:.1f}, {lo + 0.1:.1f}): "
            f"{share:.3f} of those positions, stands {acc:.3f}"
        )


if __name__ == "__main__":
    main()
