//! Gemma's chat format: a conversation as the prompt text an instruction-tuned Gemma or Gemma 2
//! checkpoint was trained on.
//!
//! The `chat_template` those checkpoints ship in `tokenizer_config.json` (gemma-7b-it,
//! gemma-2-2b-it, ...) is, as Jinja:
//!
//! ```text
//! {{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}
//! {% for message in messages %}
//!   {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}
//!   {% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}
//!   {{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}
//! {% endfor %}
//! {% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}
//! ```
//!
//! [`apply_chat_template`] renders exactly that (with `add_generation_prompt=True`) for every
//! conversation the template accepts, and is more lenient where the template raises; see its
//! documentation for each difference.

use serde::{Deserialize, Serialize};

/// The token that opens a turn; a tokenizer without it has no chat format.
pub const START_OF_TURN: &str = "<start_of_turn>";
/// The token that closes a turn.
pub const END_OF_TURN: &str = "<end_of_turn>";

/// One message of a conversation, as transformers' `apply_chat_template` and OpenAI's chat API
/// take it: `{"role": "user", "content": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `user`, `assistant`, `system` or `developer` (see [`Role::parse`]).
    pub role: String,
    /// The message's text.
    pub content: String,
}

impl ChatMessage {
    /// A message from `role`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// Who speaks a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Instructions for the whole conversation (`system`, or OpenAI's newer `developer`).
    System,
    /// The person (`user`).
    User,
    /// The model (`assistant`, written `model` in Gemma's turns).
    Assistant,
}

impl Role {
    /// The role a message's `role` names: `system` / `developer`, `user` or `assistant`;
    /// `None` for anything else (the OpenAI names only: Gemma's own `model` is not taken).
    pub fn parse(role: &str) -> Option<Self> {
        match role {
            "system" | "developer" => Some(Self::System),
            "user" => Some(Self::User),
            "assistant" => Some(Self::Assistant),
            _ => None,
        }
    }
}

/// Why a conversation has no prompt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    /// No messages at all.
    #[error("messages: at least one message")]
    Empty,
    /// A message whose role [`Role::parse`] does not know.
    #[error("messages[{index}].role '{role}': expected system, user or assistant")]
    UnknownRole {
        /// The message's position.
        index: usize,
        /// Its role.
        role: String,
    },
}

/// The prompt for `messages` in Gemma's chat format, ending with the opening of the model's
/// turn (`add_generation_prompt=True`): `<start_of_turn>user\n{text}<end_of_turn>\n` per user
/// message, `<start_of_turn>model\n{text}<end_of_turn>\n` per assistant message, then
/// `<start_of_turn>model\n`. Each message's text is trimmed, as the template's `| trim` does.
///
/// The template's leading `{{ bos_token }}` is left out: encode the result with the tokenizer's
/// special tokens (`add_special_tokens=True`, which prepends `<bos>`), giving the ids of
/// `apply_chat_template(messages, add_generation_prompt=True, tokenize=True)`.
///
/// Where Gemma / Gemma 2's template raises, this keeps what `vlm-zoo serve` has always done, so
/// that OpenAI clients (which send system prompts) work:
/// - A `system` (or `developer`) message is not refused: its text and a blank line (`"\n\n"`,
///   untrimmed) open the next user message, as Gemma 3's template does with its system
///   message; several accumulate in order, and one with no user message after it is dropped.
/// - Roles need not alternate user/assistant: the messages are rendered in the order given.
/// - An unknown role is an error ([`ChatError::UnknownRole`]) rather than a turn of that name.
pub fn apply_chat_template(messages: &[ChatMessage]) -> Result<String, ChatError> {
    if messages.is_empty() {
        return Err(ChatError::Empty);
    }
    let mut prompt = String::new();
    let mut system = String::new();
    for (index, m) in messages.iter().enumerate() {
        let role =
            Role::parse(&m.role).ok_or_else(|| ChatError::UnknownRole { index, role: m.role.clone() })?;
        let text = m.content.trim();
        match role {
            Role::System => {
                system.push_str(&m.content);
                system.push_str("\n\n");
            }
            Role::Assistant => turn(&mut prompt, "model", "", text),
            Role::User => turn(&mut prompt, "user", &std::mem::take(&mut system), text),
        }
    }
    prompt.push_str(START_OF_TURN);
    prompt.push_str("model\n");
    Ok(prompt)
}

/// Appends one turn: `<start_of_turn>{who}\n{prefix}{text}<end_of_turn>\n`.
fn turn(prompt: &mut String, who: &str, prefix: &str, text: &str) {
    prompt.push_str(&format!("{START_OF_TURN}{who}\n{prefix}{text}{END_OF_TURN}\n"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_turns_render_as_the_instruction_checkpoints_template() {
        // transformers: AutoTokenizer("google/gemma-2-2b-it").apply_chat_template(messages,
        // tokenize=False, add_generation_prompt=True), less its leading "<bos>".
        let messages = [
            ChatMessage::new("user", "Hello!"),
            ChatMessage::new("assistant", " Hi, how can I help? \n"),
            ChatMessage::new("user", "Name a colour."),
        ];
        assert_eq!(
            apply_chat_template(&messages).unwrap(),
            "<start_of_turn>user\nHello!<end_of_turn>\n\
             <start_of_turn>model\nHi, how can I help?<end_of_turn>\n\
             <start_of_turn>user\nName a colour.<end_of_turn>\n\
             <start_of_turn>model\n"
        );
    }

    #[test]
    fn a_system_message_opens_the_next_user_turn() {
        let messages = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("developer", "Answer in French."),
            ChatMessage::new("user", " Hi "),
            ChatMessage::new("system", "dropped: no user message follows"),
        ];
        assert_eq!(
            apply_chat_template(&messages).unwrap(),
            "<start_of_turn>user\nBe brief.\n\nAnswer in French.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn unknown_roles_and_empty_conversations_are_errors() {
        assert_eq!(apply_chat_template(&[]), Err(ChatError::Empty));
        let e =
            apply_chat_template(&[ChatMessage::new("user", "a"), ChatMessage::new("tool", "b")]).unwrap_err();
        assert_eq!(e, ChatError::UnknownRole { index: 1, role: "tool".into() });
        assert_eq!(e.to_string(), "messages[1].role 'tool': expected system, user or assistant");
    }
}
