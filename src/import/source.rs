//! What a reader (`gguf.rs`, `hf.rs`) hands the import: the model in the recipe's layout,
//! with its tokenizer, chat template and recorded objective.

use crate::checkpoint::gguf::QTensors;
use crate::config::{ModelConfig, ObjectiveKind};
use crate::data::chat::ChatInfo;
use anyhow::Result;

/// A model read from its source, in the recipe's layout and our tensor names.
pub struct Source {
    pub format: &'static str,
    pub architecture: String,
    pub name: Option<String>,
    pub license: Option<String>,
    pub config: ModelConfig,
    pub tensors: QTensors,
    pub tokenizer_json: String,
    pub chat: Option<ChatInfo>,
    /// The model's end-of-sequence token (chat turns end there).
    pub eos_token: Option<String>,
    /// The objective a `card export` recorded (`card.objective`), else ARM.
    pub objective: ObjectiveKind,
}

/// The objective name a `card export` records in its metadata.
pub(crate) fn objective_named(name: Option<&str>) -> Result<ObjectiveKind> {
    match name {
        None => Ok(ObjectiveKind::Arm),
        Some(n) => serde_json::from_value(serde_json::Value::String(n.into()))
            .map_err(|_| anyhow::anyhow!("unknown card.objective `{n}`")),
    }
}
