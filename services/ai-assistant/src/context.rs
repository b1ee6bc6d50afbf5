//! Retrieval for one question: BSL code in the message is checked, the
//! knowledge base is searched (with topics of the diagnostics added), and
//! metadata questions go to 1c-integration.

use crate::bsl::{self, rules, Diagnostic};
use crate::kb::KnowledgeBase;
use crate::metadata::{self, MetadataClient, MetadataError};
use crate::provider::{CodeCheck, Context, ContextPassage};

const CODE_MARKERS: &[&str] = &[
    "конецпроцедуры",
    "конецфункции",
    "конецесли",
    "конеццикла",
    "конецпопытки",
    "endprocedure",
    "endfunction",
    "endif",
    "enddo",
    "endtry",
];

/// BSL code in a chat message: fenced blocks (```bsl … ```), or else the
/// message from its first code-looking line when it holds block keywords.
/// Returns (code, the text without the code).
pub fn extract_code(message: &str) -> Option<(String, String)> {
    if message.contains("```") {
        let mut code = String::new();
        let mut prose = String::new();
        let mut in_fence = false;
        for line in message.lines() {
            if line.trim_start().starts_with("```") {
                in_fence = !in_fence;
                continue;
            }
            if in_fence {
                code.push_str(line);
                code.push('\n');
            } else {
                prose.push_str(line);
                prose.push('\n');
            }
        }
        return (!code.trim().is_empty()).then_some((code, prose));
    }
    let lower = message.to_lowercase();
    let has_block = CODE_MARKERS
        .iter()
        .any(|m| lower.split(|c: char| !c.is_alphanumeric()).any(|w| w == *m));
    if !has_block {
        return None;
    }
    let lines: Vec<&str> = message.lines().collect();
    let start = lines.iter().position(|l| looks_like_code(l))?;
    let code = lines[start..].join("\n") + "\n";
    let prose = lines[..start].join("\n");
    Some((code, prose))
}

fn looks_like_code(line: &str) -> bool {
    let t = line.trim();
    let first = t
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("")
        .to_lowercase();
    const STARTERS: &[&str] = &[
        "процедура",
        "функция",
        "если",
        "для",
        "пока",
        "попытка",
        "перем",
        "procedure",
        "function",
        "if",
        "for",
        "while",
        "try",
        "var",
    ];
    STARTERS.contains(&first.as_str())
        || t.starts_with('&')
        || t.starts_with("#Область")
        || (t.ends_with(';') && t.contains('='))
}

/// Knowledge-base search words for the diagnostics found in code.
fn topics(diags: &[Diagnostic]) -> String {
    let mut t = Vec::new();
    for d in diags {
        let words = match d.rule.as_str() {
            rules::QUERY_IN_LOOP => "запросы в цикле запрещены",
            rules::DEPRECATED_CURRENT_DATE => "ТекущаяДата ТекущаяДатаСеанса",
            rules::DEPRECATED_MESSAGE => "Сообщить СообщениеПользователю",
            rules::BEGIN_TRANSACTION_OUTSIDE_TRY | rules::COMMIT_TRANSACTION_OUTSIDE_TRY => {
                "транзакции обязательный шаблон НачатьТранзакцию Попытка"
            }
            rules::EMPTY_CODE_BLOCK | rules::EMPTY_EXCEPT_BLOCK => "пустые блоки подавление ошибок",
            rules::EXECUTE_EXTERNAL_CODE => "Выполнить Вычислить",
            rules::QUERY_SYNTAX_ERROR => "язык запросов ВЫБРАТЬ",
            _ => continue,
        };
        if !t.contains(&words) {
            t.push(words);
        }
    }
    t.join(" ")
}

/// Follow-ups this short ("а обороты?") are searched together with the
/// previous question of the conversation.
const FOLLOW_UP_WORDS: usize = 4;

/// Builds the retrieval context for `message`; `previous_question` is the
/// last question of the conversation, if any.
pub async fn build(
    kb: &KnowledgeBase,
    metadata_client: Option<&MetadataClient>,
    authorization: Option<&str>,
    message: &str,
    previous_question: Option<&str>,
) -> Context {
    let mut ctx = Context::default();
    let mut search_text = message.to_string();
    // A short follow-up ("а обороты?") is searched together with the
    // previous question, its own words weighing more.
    let follow_up_of =
        previous_question.filter(|_| message.split_whitespace().count() <= FOLLOW_UP_WORDS);
    if let Some((code, prose)) = extract_code(message) {
        let (kind, diagnostics) = if bsl::looks_like_query(&code) {
            ("query", bsl::check_query(&code))
        } else {
            ("module", bsl::check(&code))
        };
        search_text = format!("{} {}", prose, topics(&diagnostics));
        ctx.code = Some(CodeCheck {
            code,
            kind,
            diagnostics,
        });
    }
    if metadata::is_metadata_question(message) {
        if let Some(obj) = metadata::parse_object_ref(message) {
            match metadata_client {
                Some(client) => match client.lookup(&obj, authorization).await {
                    Ok(facts) => ctx.metadata = Some(facts),
                    Err(MetadataError::NotFound(set)) => {
                        ctx.metadata_error = Some(format!(
                            "Объект {}.{} (`{set}`) не найден в метаданных, опубликованных \
                             через OData: проверьте имя и состав стандартного интерфейса OData.",
                            obj.kind, obj.name
                        ))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "metadata lookup failed");
                        ctx.metadata_error = Some(format!(
                            "Не удалось получить метаданные {}.{}: {e}.",
                            obj.kind, obj.name
                        ));
                    }
                },
                None => {
                    ctx.metadata_error = Some(format!(
                        "Сведения о метаданных {}.{} недоступны: интеграция с 1С \
                         (SERVICE_URL_1C_INTEGRATION) не настроена.",
                        obj.kind, obj.name
                    ))
                }
            }
        }
    }
    if ctx.metadata.is_none() && !search_text.trim().is_empty() {
        let mut texts = vec![(search_text.as_str(), 3.0)];
        if let Some(prev) = follow_up_of {
            texts.push((prev, 1.0));
        }
        let answer = kb.answer_weighted(&texts);
        // The passages behind the citations, for providers that rewrite.
        let hits = kb.search_weighted(&texts, 8);
        ctx.passages = answer
            .sources
            .iter()
            .filter_map(|s| {
                hits.iter()
                    .find(|h| h.passage.file == s.file && h.passage.heading == s.heading)
                    .map(|h| ContextPassage {
                        file: h.passage.file.clone(),
                        heading: h.passage.heading.clone(),
                        text: h.passage.text.clone(),
                    })
            })
            .collect();
        ctx.kb = Some(answer);
    }
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fenced_code_is_extracted() {
        let (code, prose) =
            extract_code("Что не так?\n```bsl\nДата = ТекущаяДата();\n```\nспасибо").unwrap();
        assert_eq!(code, "Дата = ТекущаяДата();\n");
        assert!(prose.contains("Что не так?"));
    }

    #[test]
    fn unfenced_module_is_extracted() {
        let msg = "проверь код\nПроцедура А()\n\tСообщить(1);\nКонецПроцедуры";
        let (code, prose) = extract_code(msg).unwrap();
        assert!(code.starts_with("Процедура А()"));
        assert_eq!(prose, "проверь код");
        assert!(extract_code("как получить остатки товаров?").is_none());
    }
}
