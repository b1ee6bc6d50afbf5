//! The knowledge base: markdown files embedded in the binary (`kb/*.md`),
//! split into passages at `##`/`###` headings and indexed in RAM with
//! tantivy (BM25, Russian + English stemming and stop words, CamelCase
//! identifiers of 1C split into words).

use include_dir::{include_dir, Dir};
use serde::{Deserialize, Serialize};
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, BoostQuery, Occur, Query, TermQuery};
use tantivy::schema::{IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value, STORED};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer,
    TokenStream,
};
use tantivy::{doc, Index, IndexReader, TantivyDocument, Term};

static KB_DIR: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/kb");

const TOKENIZER: &str = "ru_en";
/// Title matches weigh more than body matches.
const TITLE_BOOST: f32 = 2.0;

/// One searchable section of a knowledge-base file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passage {
    /// Path of the file, e.g. `kb/query-language.md`.
    pub file: String,
    /// The document title (the `#` heading of the file).
    pub title: String,
    /// The section heading (`##`/`###`), or the title for the preamble.
    pub heading: String,
    /// Markdown body of the section, heading excluded.
    pub text: String,
}

/// Where a piece of an answer comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Citation {
    pub file: String,
    pub heading: String,
    pub score: f32,
}

/// A passage found for a query.
#[derive(Debug, Clone)]
pub struct Hit<'a> {
    pub passage: &'a Passage,
    pub score: f32,
}

impl Hit<'_> {
    pub fn citation(&self) -> Citation {
        Citation {
            file: self.passage.file.clone(),
            heading: self.passage.heading.clone(),
            score: self.score,
        }
    }
}

/// An answer composed from knowledge-base passages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KbAnswer {
    pub text: String,
    pub sources: Vec<Citation>,
}

#[derive(Debug, thiserror::Error)]
pub enum KbError {
    #[error("knowledge base index: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("knowledge base file {0} is not UTF-8")]
    NotUtf8(String),
}

pub struct KnowledgeBase {
    passages: Vec<Passage>,
    reader: IndexReader,
    analyzer: TextAnalyzer,
    title: tantivy::schema::Field,
    body: tantivy::schema::Field,
    pid: tantivy::schema::Field,
}

impl std::fmt::Debug for KnowledgeBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnowledgeBase")
            .field("passages", &self.passages.len())
            .finish()
    }
}

fn analyzer() -> TextAnalyzer {
    // Stemmers only touch words of their own alphabet, so the English and the
    // Russian one can run one after the other on mixed text.
    let mut builder = TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(48))
        .filter(LowerCaser)
        .dynamic();
    for lang in [Language::Russian, Language::English] {
        if let Some(stop) = StopWordFilter::new(lang) {
            builder = builder.filter_dynamic(stop);
        }
    }
    builder
        .filter_dynamic(Stemmer::new(Language::English))
        .filter_dynamic(Stemmer::new(Language::Russian))
        .build()
}

/// Text as it is indexed and queried: `ё` folded to `е`, and every 1C
/// CamelCase identifier (`ОстаткиТоваров`) followed by its words
/// (`Остатки Товаров`) so that plain-language questions match code.
pub fn normalize(text: &str) -> String {
    let folded: String = text
        .chars()
        .map(|c| match c {
            'ё' => 'е',
            'Ё' => 'Е',
            c => c,
        })
        .collect();
    let mut out = String::with_capacity(folded.len() + folded.len() / 4);
    out.push_str(&folded);
    let mut extra = Vec::new();
    for word in folded.split(|c: char| !c.is_alphanumeric()) {
        let parts = split_camel(word);
        if parts.len() > 1 {
            extra.extend(parts);
        }
    }
    if !extra.is_empty() {
        out.push('\n');
        out.push_str(&extra.join(" "));
    }
    out
}

/// `ОстаткиТоваров` → [`Остатки`, `Товаров`]; `AccumulationRegister_X` is
/// split by the tokenizer already and `HTTPСоединение` → [`HTTP`, `Соединение`].
fn split_camel(word: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = word.char_indices().collect();
    let mut parts = Vec::new();
    let mut start = 0;
    for i in 1..chars.len() {
        let (pos, c) = chars[i];
        let prev = chars[i - 1].1;
        let next_lower = chars.get(i + 1).is_some_and(|(_, n)| n.is_lowercase());
        let boundary =
            c.is_uppercase() && (prev.is_lowercase() || (prev.is_uppercase() && next_lower));
        if boundary {
            parts.push(&word[start..pos]);
            start = pos;
        }
    }
    if start < word.len() {
        parts.push(&word[start..]);
    }
    parts.retain(|p| !p.is_empty());
    parts
}

/// Splits one markdown file into passages at `##` and `###` headings
/// (headings inside fenced code blocks are ignored).
pub fn split_markdown(file: &str, content: &str) -> Vec<Passage> {
    let mut passages = Vec::new();
    let mut title = String::new();
    let mut heading: Option<String> = None;
    let mut body = String::new();
    let mut in_fence = false;
    let flush =
        |passages: &mut Vec<Passage>, title: &str, heading: &Option<String>, body: &mut String| {
            let text = body.trim().to_string();
            if !text.is_empty() {
                passages.push(Passage {
                    file: file.to_string(),
                    title: title.to_string(),
                    heading: heading.clone().unwrap_or_else(|| title.to_string()),
                    text,
                });
            }
            body.clear();
        };
    for line in content.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        }
        if !in_fence {
            if let Some(h) = line.strip_prefix("# ") {
                flush(&mut passages, &title, &heading, &mut body);
                title = h.trim().to_string();
                heading = None;
                continue;
            }
            let sub = line
                .strip_prefix("### ")
                .or_else(|| line.strip_prefix("## "));
            if let Some(h) = sub {
                flush(&mut passages, &title, &heading, &mut body);
                heading = Some(h.trim().to_string());
                continue;
            }
        }
        body.push_str(line);
        body.push('\n');
    }
    flush(&mut passages, &title, &heading, &mut body);
    passages
}

impl KnowledgeBase {
    /// The knowledge base compiled into the binary.
    pub fn embedded() -> Result<Self, KbError> {
        let mut files = Vec::new();
        for file in KB_DIR.files() {
            let name = format!("kb/{}", file.path().display());
            if !name.ends_with(".md") {
                continue;
            }
            let text = file
                .contents_utf8()
                .ok_or_else(|| KbError::NotUtf8(name.clone()))?;
            files.push((name, text.to_string()));
        }
        files.sort();
        Self::from_files(&files)
    }

    /// Builds the in-RAM index from `(path, markdown)` pairs.
    pub fn from_files(files: &[(String, String)]) -> Result<Self, KbError> {
        let passages: Vec<Passage> = files
            .iter()
            .flat_map(|(name, text)| split_markdown(name, text))
            .collect();

        let indexing = TextFieldIndexing::default()
            .set_tokenizer(TOKENIZER)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions);
        let text_opts = TextOptions::default().set_indexing_options(indexing);
        let mut sb = Schema::builder();
        let title = sb.add_text_field("title", text_opts.clone());
        let body = sb.add_text_field("body", text_opts);
        let pid = sb.add_u64_field("pid", STORED);
        let index = Index::create_in_ram(sb.build());
        index.tokenizers().register(TOKENIZER, analyzer());

        let mut writer = index.writer_with_num_threads(1, 15_000_000)?;
        for (i, p) in passages.iter().enumerate() {
            writer.add_document(doc!(
                title => normalize(&format!("{} {}", p.heading, p.title)),
                body => normalize(&p.text),
                pid => i as u64,
            ))?;
        }
        writer.commit()?;
        let reader = index.reader()?;
        Ok(Self {
            passages,
            reader,
            analyzer: analyzer(),
            title,
            body,
            pid,
        })
    }

    pub fn passages(&self) -> &[Passage] {
        &self.passages
    }

    /// Analyzed terms of a query (deduplicated, in order).
    fn query_terms(&self, query: &str) -> Vec<String> {
        let mut analyzer = self.analyzer.clone();
        let normalized = normalize(query);
        let mut stream = analyzer.token_stream(&normalized);
        let mut terms: Vec<String> = Vec::new();
        while stream.advance() {
            let t = stream.token().text.clone();
            if !terms.contains(&t) {
                terms.push(t);
            }
        }
        terms
    }

    /// The best passages for a free-text query, best first.
    pub fn search(&self, query: &str, limit: usize) -> Vec<Hit<'_>> {
        self.search_weighted(&[(query, 1.0)], limit)
    }

    /// Search with several texts of different weight (a follow-up question
    /// weighs more than the earlier question it refers to). A term takes
    /// the highest weight of the texts it occurs in.
    pub fn search_weighted(&self, texts: &[(&str, f32)], limit: usize) -> Vec<Hit<'_>> {
        let mut weighted: Vec<(String, f32)> = Vec::new();
        for (text, weight) in texts {
            for t in self.query_terms(text) {
                match weighted.iter_mut().find(|(w, _)| *w == t) {
                    Some((_, w)) => *w = w.max(*weight),
                    None => weighted.push((t, *weight)),
                }
            }
        }
        if weighted.is_empty() || limit == 0 {
            return Vec::new();
        }
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for (t, weight) in &weighted {
            let title_q = TermQuery::new(
                Term::from_field_text(self.title, t),
                IndexRecordOption::WithFreqs,
            );
            let body_q = TermQuery::new(
                Term::from_field_text(self.body, t),
                IndexRecordOption::WithFreqs,
            );
            clauses.push((
                Occur::Should,
                Box::new(BoostQuery::new(Box::new(title_q), TITLE_BOOST * weight)),
            ));
            clauses.push((
                Occur::Should,
                Box::new(BoostQuery::new(Box::new(body_q), *weight)),
            ));
        }
        let query = BooleanQuery::new(clauses);
        let searcher = self.reader.searcher();
        let top = match searcher.search(&query, &TopDocs::with_limit(limit).order_by_score()) {
            Ok(top) => top,
            Err(e) => {
                tracing::warn!(error = %e, "knowledge base search failed");
                return Vec::new();
            }
        };
        top.into_iter()
            .filter_map(|(score, addr)| {
                let doc: TantivyDocument = searcher.doc(addr).ok()?;
                let id = doc.get_first(self.pid)?.as_u64()? as usize;
                self.passages.get(id).map(|passage| Hit { passage, score })
            })
            .collect()
    }

    /// Answers a question with the best passages, each cited as
    /// `[n] file — heading`. The first passage is given in full (up to a
    /// size limit); further relevant ones by their first paragraph.
    pub fn answer(&self, question: &str) -> KbAnswer {
        self.answer_weighted(&[(question, 1.0)])
    }

    /// [`Self::answer`] over weighted texts (see [`Self::search_weighted`]).
    pub fn answer_weighted(&self, texts: &[(&str, f32)]) -> KbAnswer {
        let hits = self.search_weighted(texts, 8);
        let Some(best) = hits.first().map(|h| h.score) else {
            return KbAnswer {
                text: "В базе знаний не нашлось материалов по этому вопросу. \
                       Уточните формулировку: например, назовите объект метаданных, \
                       метод или текст ошибки."
                    .to_string(),
                sources: Vec::new(),
            };
        };
        let chosen: Vec<&Hit> = hits
            .iter()
            .filter(|h| h.score >= best * 0.45)
            .take(3)
            .collect();
        let mut text = String::new();
        let mut sources = Vec::new();
        for (i, hit) in chosen.iter().enumerate() {
            let n = i + 1;
            let p = hit.passage;
            if i == 0 {
                text.push_str(&format!("**{}** [{n}]\n\n", p.heading));
                text.push_str(&excerpt(&p.text, 3000));
            } else {
                if i == 1 {
                    text.push_str("\n\nСм. также:\n");
                }
                text.push_str(&format!(
                    "\n- **{}** [{n}]: {}",
                    p.heading,
                    first_paragraph(&p.text, 400)
                ));
            }
            sources.push(hit.citation());
        }
        text.push_str("\n\nИсточники:\n");
        for (i, s) in sources.iter().enumerate() {
            text.push_str(&format!("[{}] {} — {}\n", i + 1, s.file, s.heading));
        }
        KbAnswer { text, sources }
    }
}

/// The text cut at a paragraph boundary outside code fences, at most
/// `max` characters (a first paragraph longer than that is kept whole).
fn excerpt(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out = String::new();
    let mut in_fence = false;
    let mut last_cut = 0;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        }
        out.push_str(line);
        out.push('\n');
        if !in_fence && (line.trim().is_empty() || line.trim_start().starts_with("```")) {
            if out.chars().count() > max && last_cut > 0 {
                break;
            }
            last_cut = out.len();
        }
    }
    let cut = if last_cut > 0 { last_cut } else { out.len() };
    let mut s = out[..cut].trim_end().to_string();
    if cut < text.len() {
        s.push_str("\n\n…");
    }
    s
}

fn first_paragraph(text: &str, max: usize) -> String {
    let para = text
        .split("\n\n")
        .find(|p| !p.trim().is_empty() && !p.trim_start().starts_with("```"))
        .unwrap_or(text)
        .replace('\n', " ");
    let para = para.trim();
    if para.chars().count() <= max {
        para.to_string()
    } else {
        let cut: String = para.chars().take(max).collect();
        format!("{}…", cut.trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_cuts_at_paragraphs_outside_code() {
        let para = "слово ".repeat(30);
        let code = format!("```bsl\n{}\n```", "А = 1;\n\nБ = 2;\n".repeat(20));
        let text = format!("{para}\n\n{code}\n\n{para}\n\n{para}");
        let e = excerpt(&text, 300);
        assert!(e.ends_with('…'), "{e}");
        // Fences stay balanced: the cut is never inside the code block.
        assert_eq!(e.matches("```").count() % 2, 0, "{e}");
        assert!(e.len() < text.len());
        assert_eq!(excerpt("коротко", 300), "коротко");
    }

    #[test]
    fn camel_split() {
        assert_eq!(split_camel("ОстаткиТоваров"), vec!["Остатки", "Товаров"]);
        assert_eq!(split_camel("HTTPСоединение"), vec!["HTTP", "Соединение"]);
        assert_eq!(split_camel("Склад"), vec!["Склад"]);
    }

    #[test]
    fn markdown_split_ignores_code_headings() {
        let md = "# T\nintro\n## A\ntext a\n```\n## not a heading\n```\n### B\ntext b\n";
        let ps = split_markdown("kb/x.md", md);
        let heads: Vec<&str> = ps.iter().map(|p| p.heading.as_str()).collect();
        assert_eq!(heads, vec!["T", "A", "B"]);
        assert!(ps[1].text.contains("## not a heading"));
    }

    #[test]
    fn russian_stemming_matches_inflections() {
        let kb = KnowledgeBase::from_files(&[(
            "kb/t.md".into(),
            "# Т\n## Остатки\nОстатки товаров на складах.\n## Другое\nПечать форм.\n".into(),
        )])
        .unwrap();
        let hits = kb.search("остаток товара на складе", 5);
        assert_eq!(hits[0].passage.heading, "Остатки");
        assert_eq!(hits.len(), 1);
    }
}
