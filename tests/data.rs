//! Integration tests of the data pipeline (no network).

use card::data::{
    clean, embedded_documents, prepare, read_documents, Document, Prepared, TextTokenizer, EOT,
    MASK,
};
use std::collections::HashSet;
use std::fs;
use std::path::PathBuf;

fn doc(name: &str, text: &str) -> Document {
    Document {
        name: name.into(),
        text: text.into(),
    }
}

fn odd_texts() -> Vec<String> {
    let (latin1, fell_back) = clean::decode_bytes(b"caf\xe9 na\xefve \xa9 \xff\xa0end");
    assert!(fell_back);
    vec![
        "héllo wörld — 日本語 テキスト 🦀🦀 Ελληνικά".into(),
        latin1,
        "  leading\t\ttabs   and   runs\n\n\n\n   \r\n trailing   ".into(),
        "\u{0}\u{1}\u{7f} control \u{200b}zero-width\u{feff}".into(),
        "a".repeat(1000),
        format!("before{EOT}after {MASK} x"),
        String::new(),
    ]
}

#[test]
fn embedded_corpus_is_split_by_chapter() {
    let docs = embedded_documents();
    assert_eq!(docs.len(), 12);
    assert!(docs[0]
        .text
        .starts_with("[Alice's Adventures in Wonderland"));
    for d in &docs[1..] {
        assert!(d.text.starts_with("CHAPTER "), "{}", d.name);
    }
    let names: HashSet<_> = docs.iter().map(|d| d.name.clone()).collect();
    assert_eq!(names.len(), docs.len());
    let total: usize = docs.iter().map(|d| d.text.len()).sum();
    assert!(total > 140_000, "{total}");
}

#[test]
fn tokenizer_round_trip_specials_and_vocab_size() {
    let docs = embedded_documents();
    for vocab in [512, 2048] {
        let tok = TextTokenizer::train(&docs, vocab).unwrap();
        assert_eq!(tok.vocab_size(), vocab);
        assert_eq!((tok.eot_id(), tok.mask_id()), (0, 1));
        assert_eq!(tok.decode(&[0]).unwrap(), EOT);
        assert_eq!(tok.decode(&[1]).unwrap(), MASK);
        assert_eq!(tok.encode(EOT).unwrap(), vec![0]);
        assert_eq!(tok.encode(MASK).unwrap(), vec![1]);
        for d in &docs {
            let ids = tok.encode(&d.text).unwrap();
            assert!(ids.iter().all(|&i| i > 1 && (i as usize) < vocab));
            assert_eq!(tok.decode(&ids).unwrap(), d.text, "{}", d.name);
        }
        for text in odd_texts() {
            let ids = tok.encode(&text).unwrap();
            assert_eq!(tok.decode(&ids).unwrap(), text);
        }
        assert!(tok.decode(&[vocab as u32]).is_err());
    }
}

#[test]
fn tokenizer_training_is_deterministic_and_serialises() {
    let docs = embedded_documents();
    let a = TextTokenizer::train(&docs, 1024).unwrap();
    let b = TextTokenizer::train(&docs, 1024).unwrap();
    assert_eq!(a.to_json().unwrap(), b.to_json().unwrap());
    assert_eq!(a.hash(), b.hash());
    assert_eq!(a.hash().len(), 64);
    let c = TextTokenizer::from_json(&a.to_json().unwrap()).unwrap();
    assert_eq!(c.hash(), a.hash());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    a.save(&path).unwrap();
    let d = TextTokenizer::from_file(&path).unwrap();
    assert_eq!(d.hash(), a.hash());
    let other = TextTokenizer::train(&docs[..6], 1024).unwrap();
    assert_ne!(other.hash(), a.hash());
}

#[test]
fn tokenizer_compresses_embedded_corpus() {
    let docs = embedded_documents();
    let tok = TextTokenizer::train(&docs, 2048).unwrap();
    let (mut bytes, mut tokens) = (0usize, 0usize);
    for d in &docs {
        bytes += d.text.len();
        tokens += tok.encode(&d.text).unwrap().len();
    }
    let ratio = bytes as f64 / tokens as f64;
    assert!(ratio > 2.5, "bytes/token {ratio}");
}

#[test]
fn tokenizer_rejects_bad_input_and_adds_missing_specials() {
    let docs = embedded_documents();
    assert!(TextTokenizer::train(&docs, 100).is_err());
    assert!(TextTokenizer::train(&[doc("e", "  \n")], 512).is_err());
    assert!(TextTokenizer::from_json("{not json").is_err());
    // A tokenizer without MASK gets it appended as a special token.
    let tok = TextTokenizer::train(&docs, 512).unwrap();
    let json = tok.to_json().unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let added = v["added_tokens"].as_array_mut().unwrap();
    added.retain(|t| t["content"] != MASK);
    let vocab = v["model"]["vocab"].as_object_mut().unwrap();
    let id = vocab.remove(MASK).unwrap();
    vocab.insert("<|unused|>".into(), id);
    let stripped = TextTokenizer::from_json(&v.to_string()).unwrap();
    assert_eq!(stripped.eot_id(), 0);
    assert_eq!(stripped.mask_id(), 512);
    assert_eq!(stripped.vocab_size(), 513);
    assert_eq!(stripped.encode(MASK).unwrap(), vec![512]);
}

/// Split a stream at EOT and decode every document.
fn decode_docs(tok: &TextTokenizer, stream: &[u32]) -> Vec<String> {
    assert_eq!(stream.last(), Some(&tok.eot_id()));
    stream[..stream.len() - 1]
        .split(|&i| i == tok.eot_id())
        .map(|ids| tok.decode(ids).unwrap())
        .collect()
}

#[test]
fn prepare_splits_whole_documents_deterministically() {
    let docs = embedded_documents();
    let p = prepare(docs.clone(), None, 1024, 0.25, 7).unwrap();
    assert_eq!(p.meta.val_documents, 3);
    assert_eq!(p.meta.train_documents, 9);
    let train = decode_docs(&p.tokenizer, &p.train);
    let val = decode_docs(&p.tokenizer, &p.val);
    assert_eq!(train.len(), 9);
    assert_eq!(val.len(), 3);
    for d in &docs {
        let in_train = train.iter().filter(|t| **t == d.text).count();
        let in_val = val.iter().filter(|t| **t == d.text).count();
        assert_eq!(
            in_train + in_val,
            1,
            "{} appears {in_train}+{in_val} times",
            d.name
        );
    }
    let bytes = |texts: &[String]| texts.iter().map(|t| t.len() as u64).sum::<u64>();
    assert_eq!(p.train_bytes, bytes(&train));
    assert_eq!(p.val_bytes, bytes(&val));
    assert_eq!(p.meta.train_tokens, p.train.len() as u64);
    assert_eq!(p.meta.val_sources.len(), 3);

    let again = prepare(docs.clone(), None, 1024, 0.25, 7).unwrap();
    assert_eq!(again.train, p.train);
    assert_eq!(again.val, p.val);
    assert_eq!(again.meta, p.meta);
    // Other seeds give other splits (the same tokenizer keeps this cheap).
    let differs = (0..5).any(|seed| {
        let q = prepare(docs.clone(), Some(p.tokenizer.clone()), 0, 0.25, seed).unwrap();
        q.meta.val_sources != p.meta.val_sources
    });
    assert!(differs);
}

#[test]
fn holdout_sets_sources_aside_from_training_and_the_tokenizer() {
    let docs = embedded_documents();
    let holdout = vec!["chapter-03".to_string(), "chapter-1".to_string()];
    let p = card::data::prepare::prepare_with_holdout(docs.clone(), None, 1024, 0.25, 7, &holdout)
        .unwrap();
    // chapter-03 alone; "chapter-1" takes chapters 10, 11 and 12 (first matching pattern wins).
    let groups = p.heldout_groups();
    assert_eq!(groups.len(), 2);
    assert_eq!(p.meta.holdout[0].sources, vec!["carroll-alice/chapter-03"]);
    assert_eq!(p.meta.holdout[1].sources.len(), 3);
    assert_eq!(p.meta.train_documents + p.meta.val_documents, 12 - 4);
    let train = decode_docs(&p.tokenizer, &p.train);
    let val = decode_docs(&p.tokenizer, &p.val);
    for (g, (pattern, ids, bytes)) in p.meta.holdout.iter().zip(&groups) {
        assert_eq!(*pattern, g.pattern);
        let texts = decode_docs(&p.tokenizer, ids);
        assert_eq!(texts.len(), g.sources.len());
        assert_eq!(*bytes, texts.iter().map(|t| t.len() as u64).sum::<u64>());
        for (name, text) in g.sources.iter().zip(&texts) {
            let original = docs.iter().find(|d| &d.name == name).unwrap();
            assert_eq!(text, &original.text);
            assert!(
                !train.contains(text) && !val.contains(text),
                "{name} leaked"
            );
        }
    }
    // The tokenizer never saw the held-out text: it equals one trained without those documents.
    let rest: Vec<Document> = docs
        .iter()
        .filter(|d| !holdout.iter().any(|h| d.name.contains(h.as_str())))
        .cloned()
        .collect();
    assert_eq!(
        prepare(rest, None, 1024, 0.25, 7).unwrap().tokenizer.hash(),
        p.tokenizer.hash()
    );
    // Saved and loaded as it was; a corpus without holdout still loads and has none.
    let root = tempfile::tempdir().unwrap();
    p.save(&root.path().join("h")).unwrap();
    let back = Prepared::load(&root.path().join("h")).unwrap();
    assert_eq!(
        (back.heldout.clone(), back.meta.clone()),
        (p.heldout.clone(), p.meta.clone())
    );
    fs::write(root.path().join("h/heldout.bin"), b"xx").unwrap();
    let err = format!("{:#}", Prepared::load(&root.path().join("h")).unwrap_err());
    assert!(err.contains("heldout.bin"), "{err}");
    // Patterns that match nothing, or everything, are refused by name.
    let none = card::data::prepare::prepare_with_holdout(
        docs.clone(),
        None,
        1024,
        0.25,
        7,
        &["gutenberg/".into()],
    );
    assert!(format!("{:#}", none.unwrap_err()).contains("\"gutenberg/\" matches no document"));
    let all =
        card::data::prepare::prepare_with_holdout(docs, None, 1024, 0.25, 7, &["chapter".into()]);
    assert!(all.is_err());
}

#[test]
fn prepare_edge_cases() {
    let two = vec![doc("a", "first document"), doc("b", "second document")];
    let p = prepare(two, None, 300, 0.01, 0).unwrap();
    assert_eq!((p.meta.train_documents, p.meta.val_documents), (1, 1));
    let p = prepare(
        vec![doc("a", "x y"), doc("b", "z w"), doc("c", "v u")],
        None,
        300,
        0.99,
        0,
    )
    .unwrap();
    assert_eq!((p.meta.train_documents, p.meta.val_documents), (1, 2));
    assert!(prepare(vec![doc("a", "only one")], None, 300, 0.1, 0).is_err());
    assert!(prepare(vec![doc("a", "one"), doc("b", "  ")], None, 300, 0.1, 0).is_err());
    assert!(prepare(embedded_documents(), None, 512, 0.0, 0).is_err());
    assert!(prepare(embedded_documents(), None, 512, 1.0, 0).is_err());
}

#[test]
fn prepared_save_load_round_trip_and_corruption() {
    let p = prepare(embedded_documents(), None, 700, 0.2, 3).unwrap();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("prepared/alice");
    p.save(&dir).unwrap();
    for f in ["tokenizer.json", "train.bin", "val.bin", "meta.json"] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    assert_eq!(p.meta.token_dtype, "u16");
    assert_eq!(
        fs::metadata(dir.join("train.bin")).unwrap().len(),
        2 * p.train.len() as u64
    );
    let l = Prepared::load(&dir).unwrap();
    assert_eq!(l.train, p.train);
    assert_eq!(l.val, p.val);
    assert_eq!((l.train_bytes, l.val_bytes), (p.train_bytes, p.val_bytes));
    assert_eq!(l.meta, p.meta);
    assert_eq!(l.tokenizer.hash(), p.tokenizer.hash());

    // Overwriting a prepared directory works; nothing is left next to it.
    p.save(&dir).unwrap();
    let siblings: Vec<_> = fs::read_dir(dir.parent().unwrap()).unwrap().collect();
    assert_eq!(siblings.len(), 1);

    // Truncated train.bin.
    let train = dir.join("train.bin");
    let bytes = fs::read(&train).unwrap();
    fs::write(&train, &bytes[..bytes.len() - 2]).unwrap();
    let err = format!("{:#}", Prepared::load(&dir).unwrap_err());
    assert!(
        err.contains("train.bin") && err.contains("truncated"),
        "{err}"
    );
    // Same size, one byte flipped.
    let mut flipped = bytes.clone();
    flipped[10] ^= 0x01;
    fs::write(&train, &flipped).unwrap();
    let err = format!("{:#}", Prepared::load(&dir).unwrap_err());
    assert!(
        err.contains("train.bin") && err.contains("corrupt"),
        "{err}"
    );
    fs::write(&train, &bytes).unwrap();
    Prepared::load(&dir).unwrap();
    // A different tokenizer.
    let other = TextTokenizer::train(&embedded_documents()[..4], 700).unwrap();
    let saved_tok = fs::read(dir.join("tokenizer.json")).unwrap();
    other.save(&dir.join("tokenizer.json")).unwrap();
    let err = format!("{:#}", Prepared::load(&dir).unwrap_err());
    assert!(err.contains("hash"), "{err}");
    fs::write(dir.join("tokenizer.json"), saved_tok).unwrap();
    // Missing file.
    fs::remove_file(dir.join("val.bin")).unwrap();
    let err = format!("{:#}", Prepared::load(&dir).unwrap_err());
    assert!(err.contains("val.bin is missing"), "{err}");

    // Refuses to replace a directory that is not a prepared corpus.
    let other_dir = root.path().join("notes");
    fs::create_dir(&other_dir).unwrap();
    fs::write(other_dir.join("keep.txt"), "precious").unwrap();
    let err = format!("{:#}", p.save(&other_dir).unwrap_err());
    assert!(err.contains("refusing"), "{err}");
    assert_eq!(
        fs::read_to_string(other_dir.join("keep.txt")).unwrap(),
        "precious"
    );
}

#[test]
fn u32_streams_for_large_vocabularies() {
    // A tokenizer whose id space exceeds 65536 (an added token with a large id).
    let tok = TextTokenizer::train(&embedded_documents(), 600).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&tok.to_json().unwrap()).unwrap();
    v["model"]["vocab"]
        .as_object_mut()
        .unwrap()
        .insert("zzzz-big".into(), serde_json::json!(70000));
    let big = TextTokenizer::from_json(&v.to_string()).unwrap();
    assert_eq!(big.vocab_size(), 70001);
    let p = prepare(embedded_documents(), Some(big), 0, 0.1, 0).unwrap();
    assert_eq!(p.meta.token_dtype, "u32");
    let dir = tempfile::tempdir().unwrap();
    p.save(dir.path()).unwrap();
    assert_eq!(
        fs::metadata(dir.path().join("val.bin")).unwrap().len(),
        4 * p.val.len() as u64
    );
    assert_eq!(Prepared::load(dir.path()).unwrap().val, p.val);
}

fn write(path: &PathBuf, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

#[test]
fn read_documents_files_dirs_and_errors() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let corpus = r.join("corpus");
    write(&corpus.join("a.txt"), b"alpha text\r\nline two\n");
    write(&corpus.join("sub/ca01"), b"brown style");
    write(&corpus.join("sub/latin.txt"), b"caf\xe9 cr\xe8me");
    write(&corpus.join("sub/blank.txt"), b"  \n\n");
    write(&corpus.join("notes.md"), b"ignored");
    write(&corpus.join(".hidden.txt"), b"ignored");
    let docs = read_documents(std::slice::from_ref(&corpus)).unwrap();
    let texts: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
    assert_eq!(
        texts,
        ["alpha text\nline two\n", "brown style", "café crème"]
    );
    assert!(docs[2].name.ends_with("latin.txt"));

    // Latin-1 file named directly; an explicit file is read whatever its extension.
    write(&r.join("x.dat"), b"\xe9t\xe9");
    assert_eq!(read_documents(&[r.join("x.dat")]).unwrap()[0].text, "été");

    let err = |paths: &[PathBuf]| format!("{:#}", read_documents(paths).unwrap_err());
    let missing = r.join("nope.txt");
    assert!(err(std::slice::from_ref(&missing)).contains("nope.txt"));
    assert!(err(&[missing]).contains("does not exist"));
    write(&r.join("empty.txt"), b"");
    assert!(err(&[r.join("empty.txt")]).contains("empty"));
    write(&r.join("bin.txt"), b"PK\x03\x04\0\0\x14\0binary");
    let e = err(&[r.join("bin.txt")]);
    assert!(e.contains("bin.txt") && e.contains("binary"), "{e}");
    write(
        &r.join("ctrl.txt"),
        &[0x01, 0x02, 0x03, 0x1b, 0x05, b'a', 0x06, 0x07],
    );
    assert!(err(&[r.join("ctrl.txt")]).contains("binary"));
    write(&r.join("nodocs/readme.md"), b"not a corpus file");
    let e = err(&[r.join("nodocs")]);
    assert!(e.contains("nodocs") && e.contains("no text files"), "{e}");
    write(&r.join("blanks/a.txt"), b"   \n");
    assert!(err(&[r.join("blanks")]).contains("empty corpus"));
    assert!(read_documents(&[]).is_err());
}

#[test]
fn brown_cleaning_detokenizes() {
    let raw = "\n\n\tThe/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd ``/`` no/at \
               evidence/nn ''/'' that/cs any/dti irregularities/nns took/vbd place/nn ./.\n\n\n\
               \t``/`` Only/rb a/at handful/nn was/bedz received/vbn ''/'' ,/, the/at jury/nn \
               said/vbd ;/. ;/.\nit/pps did/dod n't/* (/( really/rb )/) matter/vb ?/.\n";
    assert_eq!(
        clean::clean_brown(raw),
        "The Fulton County Grand Jury said \"no evidence\" that any irregularities took place.\n\n\
         \"Only a handful was received\", the jury said;; it didn't (really) matter?\n"
    );
}
