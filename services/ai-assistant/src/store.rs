//! Conversation history in PostgreSQL (runtime-checked sqlx queries).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::provider::{Speaker, Turn};

#[derive(Debug, Clone, Serialize)]
pub struct ConversationSummary {
    pub id: Uuid,
    pub title: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub message_count: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoredMessage {
    pub id: Uuid,
    pub role: String,
    pub content: String,
    pub sources: Value,
    pub diagnostics: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Conversation {
    pub id: Uuid,
    pub title: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub messages: Vec<StoredMessage>,
}

/// One question and its answer, written together.
pub struct Exchange<'a> {
    pub conversation_id: Uuid,
    pub user_id: &'a str,
    pub question: &'a str,
    pub answer: &'a str,
    pub answer_id: Uuid,
    pub sources: Value,
    pub diagnostics: Value,
    pub provider: &'a str,
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

/// Title of a new conversation: the first line of the first question.
pub fn title_of(question: &str) -> String {
    let line = question
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("```"))
        .unwrap_or("");
    let mut t: String = line.chars().take(80).collect();
    if line.chars().count() > 80 {
        t.push('…');
    }
    if t.is_empty() {
        "Диалог".into()
    } else {
        t
    }
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Store { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Does `user_id` own conversation `id`?
    pub async fn owns(&self, user_id: &str, id: Uuid) -> Result<bool, sqlx::Error> {
        let row = sqlx::query("SELECT 1 FROM conversations WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// The last `limit` turns of a conversation, oldest first.
    pub async fn history(&self, id: Uuid, limit: i64) -> Result<Vec<Turn>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT role, content FROM (
                 SELECT seq, role, content FROM messages WHERE conversation_id = $1
                 ORDER BY seq DESC LIMIT $2) m
             ORDER BY seq",
        )
        .bind(id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let role: String = r.get("role");
                Turn {
                    role: if role == "assistant" {
                        Speaker::Assistant
                    } else {
                        Speaker::User
                    },
                    content: r.get("content"),
                }
            })
            .collect())
    }

    /// Stores a question and its answer; creates the conversation when new.
    /// Returns the id of the stored question.
    pub async fn save_exchange(&self, ex: &Exchange<'_>) -> Result<Uuid, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let upsert = sqlx::query(
            "INSERT INTO conversations (id, user_id, title) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET updated_at = now()
             WHERE conversations.user_id = EXCLUDED.user_id",
        )
        .bind(ex.conversation_id)
        .bind(ex.user_id)
        .bind(title_of(ex.question))
        .execute(&mut *tx)
        .await?;
        if upsert.rows_affected() == 0 {
            // The id belongs to another user's conversation.
            return Err(sqlx::Error::RowNotFound);
        }
        let question_id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO messages (id, conversation_id, role, content) VALUES ($1, $2, 'user', $3)",
        )
        .bind(question_id)
        .bind(ex.conversation_id)
        .bind(ex.question)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO messages (id, conversation_id, role, content, sources, diagnostics, provider)
             VALUES ($1, $2, 'assistant', $3, $4, $5, $6)",
        )
        .bind(ex.answer_id)
        .bind(ex.conversation_id)
        .bind(ex.answer)
        .bind(&ex.sources)
        .bind(&ex.diagnostics)
        .bind(ex.provider)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(question_id)
    }

    pub async fn list(
        &self,
        user_id: &str,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<ConversationSummary>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT c.id, c.title, c.created_at, c.updated_at,
                    (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) AS message_count
             FROM conversations c WHERE c.user_id = $1
             ORDER BY c.updated_at DESC, c.id LIMIT $2 OFFSET $3",
        )
        .bind(user_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| ConversationSummary {
                id: r.get("id"),
                title: r.get("title"),
                created_at: r.get("created_at"),
                updated_at: r.get("updated_at"),
                message_count: r.get("message_count"),
            })
            .collect())
    }

    /// Deletes a conversation (and its messages) of `user_id`; false when
    /// there is none.
    pub async fn delete(&self, user_id: &str, id: Uuid) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("DELETE FROM conversations WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// A conversation with all its messages, only for its owner.
    pub async fn get(&self, user_id: &str, id: Uuid) -> Result<Option<Conversation>, sqlx::Error> {
        let Some(c) = sqlx::query(
            "SELECT id, title, created_at, updated_at FROM conversations WHERE id = $1 AND user_id = $2",
        )
        .bind(id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let rows = sqlx::query(
            "SELECT id, role, content, sources, diagnostics, provider, created_at
             FROM messages WHERE conversation_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some(Conversation {
            id: c.get("id"),
            title: c.get("title"),
            created_at: c.get("created_at"),
            updated_at: c.get("updated_at"),
            messages: rows
                .into_iter()
                .map(|r| StoredMessage {
                    id: r.get("id"),
                    role: r.get("role"),
                    content: r.get("content"),
                    sources: r.get("sources"),
                    diagnostics: r.get("diagnostics"),
                    provider: r.get("provider"),
                    created_at: r.get("created_at"),
                })
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::title_of;

    #[test]
    fn titles() {
        assert_eq!(
            title_of("\n  Как сделать бэкап?\nподробнее"),
            "Как сделать бэкап?"
        );
        assert_eq!(title_of("```bsl\nПроцедура А()"), "Процедура А()");
        assert_eq!(title_of("   "), "Диалог");
        let long = "я".repeat(100);
        assert_eq!(title_of(&long).chars().count(), 81);
    }
}
