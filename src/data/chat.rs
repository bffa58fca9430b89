//! Conversations as prompts. An imported model renders them with its own Jinja chat template
//! (`chat.json`, from GGUF `tokenizer.chat_template` or `tokenizer_config.json`) and its turn
//! ends at its end-of-sequence token; our own models get a plain transcript
//! (`User: …\nAssistant:`) whose turn ends where the next `User:` line would begin.

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `chat.json`: how to render a conversation for the model and where its turn ends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatInfo {
    /// A Jinja template over `messages` (role, content), `add_generation_prompt`,
    /// `bos_token`, `eos_token`.
    pub template: String,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// `system` (or OpenAI's `developer`), `user`, `assistant`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            _ => return None,
        })
    }

    fn label(self) -> &'static str {
        match self {
            Role::System => "System",
            Role::User => "User",
            Role::Assistant => "Assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

/// How a checkpoint turns messages into a prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatFormat {
    Plain,
    Template(ChatInfo),
}

/// The plain transcript's end of turn.
pub const PLAIN_STOP: &str = "\nUser:";

impl ChatFormat {
    /// The template in a checkpoint's `chat.json`, else the plain transcript.
    pub fn for_checkpoint(extra: &BTreeMap<String, String>) -> Result<Self> {
        match extra.get("chat.json") {
            Some(text) => {
                let info: ChatInfo =
                    serde_json::from_str(text).context("the checkpoint's chat.json is invalid")?;
                let f = ChatFormat::Template(info);
                // A template that does not render is refused when the model is opened.
                f.render(&[Message {
                    role: Role::User,
                    content: "hi".into(),
                }])?;
                Ok(f)
            }
            None => Ok(ChatFormat::Plain),
        }
    }

    /// The prompt for the assistant's next turn.
    pub fn render(&self, messages: &[Message]) -> Result<String> {
        match self {
            ChatFormat::Plain => {
                let mut text = String::new();
                for m in messages {
                    text.push_str(&format!("{}: {}\n", m.role.label(), m.content.trim()));
                }
                text.push_str("Assistant:");
                Ok(text)
            }
            ChatFormat::Template(info) => {
                let mut env = minijinja::Environment::new();
                env.set_unknown_method_callback(
                    minijinja_contrib::pycompat::unknown_method_callback,
                );
                env.add_function(
                    "raise_exception",
                    |msg: String| -> Result<(), minijinja::Error> {
                        Err(minijinja::Error::new(
                            minijinja::ErrorKind::InvalidOperation,
                            msg,
                        ))
                    },
                );
                let ctx = minijinja::context! {
                    messages => messages,
                    add_generation_prompt => true,
                    bos_token => info.bos_token.clone().unwrap_or_default(),
                    eos_token => info.eos_token.clone().unwrap_or_default(),
                };
                env.render_str(&info.template, ctx)
                    .map_err(|e| anyhow!("the model's chat template fails: {e}"))
            }
        }
    }

    /// The text that ends the assistant's turn (the continuation is cut before it); None
    /// for a template whose model names no end-of-sequence token.
    pub fn stop(&self) -> Option<String> {
        match self {
            ChatFormat::Plain => Some(PLAIN_STOP.to_string()),
            ChatFormat::Template(info) => info.eos_token.clone().filter(|s| !s.is_empty()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs() -> Vec<Message> {
        vec![
            Message {
                role: Role::System,
                content: "Be brief.".into(),
            },
            Message {
                role: Role::User,
                content: " Hi ".into(),
            },
        ]
    }

    #[test]
    fn plain_transcript_for_our_models() {
        let f = ChatFormat::for_checkpoint(&BTreeMap::new()).unwrap();
        assert_eq!(
            f.render(&msgs()).unwrap(),
            "System: Be brief.\nUser: Hi\nAssistant:"
        );
        assert_eq!(f.stop().as_deref(), Some(PLAIN_STOP));
    }

    #[test]
    fn a_models_template_renders_with_python_methods_and_its_tokens() {
        // The shape of SmolLM2's and Qwen's templates: loop state, concatenation, a Python
        // string method, the generation prompt, and raise_exception for bad input.
        let template = "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}{{ raise_exception('system first') }}{% endif %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'].strip() + eos_token + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        let info = ChatInfo {
            template: template.into(),
            bos_token: None,
            eos_token: Some("<|im_end|>".into()),
        };
        let mut extra = BTreeMap::new();
        extra.insert("chat.json".into(), serde_json::to_string(&info).unwrap());
        let f = ChatFormat::for_checkpoint(&extra);
        // The check render (a lone user message) raises: refused when opened.
        let err = f.unwrap_err().to_string();
        assert!(err.contains("system first"), "{err}");
        let f = ChatFormat::Template(info);
        assert_eq!(
            f.render(&msgs()).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(f.stop().as_deref(), Some("<|im_end|>"));
    }

    #[test]
    fn tool_calling_templates_that_call_tojson_render() {
        // The shape of Qwen2.5's and Llama 3.1's tool templates: values serialised by `tojson`.
        let info = ChatInfo {
            template: "{% for m in messages %}{{ m | tojson }}\n{{ m['content'] | tojson(indent=2) }}\n{% endfor %}".into(),
            bos_token: None,
            eos_token: None,
        };
        let out = ChatFormat::Template(info).render(&msgs()[..1]).unwrap();
        let mut lines = out.lines();
        let m: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(m["content"], "Be brief.");
        assert_eq!(lines.next(), Some("\"Be brief.\""));
    }
}
