//! Conversations as prompts, one way for `vlm-zoo generate --chat FILE` and the server's
//! `POST /v1/chat/completions`, so that both answer the same conversation alike.

use std::io::Read;
use std::path::Path;
use zoo_gemma::chat::{ChatError, ChatMessage, Role, START_OF_TURN};
use zoo_nn::{NnError, Result, TextTokenizer};

/// The prompt for `messages`. With a chat format (`chat_format`: a Gemma whose tokenizer has
/// `<start_of_turn>`), Gemma's template ([`zoo_gemma::chat::apply_chat_template`]); without
/// one, the last user message: PaliGemma's prompts are task prefixes (`caption en`), and a
/// tokenizer without the turn tokens has no turns to mark. Every role is checked either way.
pub fn conversation_prompt(
    messages: &[ChatMessage],
    chat_format: bool,
) -> std::result::Result<String, ChatError> {
    if chat_format {
        return zoo_gemma::apply_chat_template(messages);
    }
    if messages.is_empty() {
        return Err(ChatError::Empty);
    }
    let mut last_user = "";
    for (index, m) in messages.iter().enumerate() {
        match Role::parse(&m.role) {
            None => return Err(ChatError::UnknownRole { index, role: m.role.clone() }),
            Some(Role::User) => last_user = &m.content,
            Some(_) => {}
        }
    }
    Ok(last_user.to_string())
}

/// `--chat FILE`'s conversation (`-`: stdin): a JSON list of messages
/// (`[{"role": "user", "content": "..."}, ...]`), or an object holding them in `messages`
/// (a chat-completions request body; its other fields are ignored).
pub fn read_conversation(path: &Path) -> Result<Vec<ChatMessage>> {
    let mut text = String::new();
    if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).map_err(|e| NnError::io("stdin", e))?;
    } else {
        text = std::fs::read_to_string(path).map_err(|e| NnError::io(path, e))?;
    }
    let json = |key: &str, source| NnError::Json { path: path.to_path_buf(), key: key.into(), source };
    let mut v: serde_json::Value = serde_json::from_str(&text).map_err(|e| json("", e))?;
    let (key, messages) = match v.get_mut("messages") {
        Some(m) => ("messages", m.take()),
        None => ("", v),
    };
    serde_json::from_value(messages).map_err(|e| json(key, e))
}

/// The prompt `vlm-zoo generate --chat FILE` gives the model in `dir`: FILE's conversation
/// through [`conversation_prompt`], with a chat format when `dir` holds a Gemma whose
/// tokenizer has Gemma's turn tokens (what the server checks on its loaded model).
pub fn chat_prompt(dir: &Path, file: &Path) -> Result<String> {
    let messages = read_conversation(file)?;
    let family = crate::models::Family::of(dir)?;
    let chat_format = matches!(family, crate::models::Family::Gemma | crate::models::Family::Gemma2)
        && TextTokenizer::from_dir(dir)?.token_to_id(START_OF_TURN).is_some();
    conversation_prompt(&messages, chat_format)
        .map_err(|e| NnError::Config(format!("{}: {e}", file.display())))
}
