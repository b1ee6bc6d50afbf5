//! ai-assistant: the AI assistant for 1C:Enterprise users and developers.
//!
//! Offline abilities: an embedded knowledge base searched with tantivy
//! (Russian and English stemming) and a BSL checker built on tree-sitter-bsl.

pub mod bsl;
pub mod kb;
