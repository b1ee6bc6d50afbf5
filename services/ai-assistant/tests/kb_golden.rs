//! Golden answers of the embedded knowledge base: the right passages are
//! found and cited for typical questions of 1C developers.

use ai_assistant::kb::KnowledgeBase;

fn kb() -> KnowledgeBase {
    KnowledgeBase::embedded().expect("embedded knowledge base must index")
}

#[test]
fn every_kb_file_is_split_into_cited_passages() {
    let kb = kb();
    let files: std::collections::BTreeSet<&str> =
        kb.passages().iter().map(|p| p.file.as_str()).collect();
    for f in [
        "kb/administration.md",
        "kb/bsl-basics.md",
        "kb/bsl-patterns.md",
        "kb/coding-standards.md",
        "kb/common-errors.md",
        "kb/data-exchange.md",
        "kb/managed-forms.md",
        "kb/odata.md",
        "kb/query-language.md",
        "kb/reports-skd.md",
    ] {
        assert!(files.contains(f), "{f} missing from {files:?}");
    }
    assert!(kb.passages().len() > 50, "{} passages", kb.passages().len());
}

#[test]
fn stock_balances_question_cites_register_balance_passages() {
    let kb = kb();
    let a = kb.answer("как получить остатки товаров на складе запросом?");
    let first = &a.sources[0];
    assert_eq!(first.file, "kb/query-language.md");
    assert_eq!(
        first.heading,
        "Как получить остатки товаров на складе запросом"
    );
    assert!(
        a.text
            .contains("РегистрНакопления.ОстаткиТоваров.Остатки(&Дата, Склад = &Склад)"),
        "answer must show the virtual table call:\n{}",
        a.text
    );
    assert!(a
        .text
        .contains("[1] kb/query-language.md — Как получить остатки"));
    // Further sources are about accumulation-register balances too.
    assert!(a.sources.len() >= 2, "{:?}", a.sources);
    assert!(a.sources.iter().all(|s| s.file == "kb/query-language.md"
        || s.heading.to_lowercase().contains("остат")), "{:?}", a.sources);
}

#[test]
fn odata_content_question_cites_set_content_passage() {
    let kb = kb();
    let a = kb.answer("Как установить состав стандартного интерфейса OData?");
    assert_eq!(a.sources[0].file, "kb/odata.md");
    assert_eq!(
        a.sources[0].heading,
        "Установить состав стандартного интерфейса OData"
    );
    assert!(a
        .text
        .contains("УстановитьСоставСтандартногоИнтерфейсаOData(Состав)"));
}

#[test]
fn default_vrd_question_finds_publication_passage() {
    let kb = kb();
    let hits = kb.search("default.vrd enableStandardOData publication", 3);
    assert_eq!(hits[0].passage.file, "kb/odata.md");
    assert_eq!(
        hits[0].passage.heading,
        "Публикация на веб-сервере и файл default.vrd"
    );
}

#[test]
fn english_question_is_stemmed_too() {
    let kb = kb();
    let hits = kb.search("how to make backups", 3);
    assert_eq!(
        hits[0].passage.heading,
        "Резервное копирование информационной базы (backup)"
    );
}

#[test]
fn lock_conflict_error_is_found_by_message() {
    let kb = kb();
    let a = kb.answer("ошибка Конфликт блокировок при выполнении транзакции");
    assert_eq!(a.sources[0].file, "kb/common-errors.md");
    assert!(a.sources[0].heading.starts_with("«Конфликт блокировок"));
}

#[test]
fn query_in_loop_standard_is_found() {
    let kb = kb();
    let hits = kb.search("почему нельзя выполнять запрос в цикле", 3);
    assert_eq!(hits[0].passage.heading, "Запросы в цикле запрещены");
}

#[test]
fn unknown_topic_gives_no_sources() {
    let kb = kb();
    let a = kb.answer("zzzz qqqq");
    assert!(a.sources.is_empty());
    assert!(a.text.contains("не нашлось"));
}

#[test]
fn managed_form_server_call_question() {
    let kb = kb();
    let hits = kb.search(
        "чем НаСервереБезКонтекста лучше вызова НаСервере из формы",
        3,
    );
    assert_eq!(hits[0].passage.file, "kb/managed-forms.md");
    assert_eq!(
        hits[0].passage.heading,
        "Вызовы сервера из формы и директивы компиляции"
    );
}

#[test]
fn skd_report_output_question() {
    let kb = kb();
    let a = kb.answer("как программно вывести отчёт СКД в табличный документ");
    assert_eq!(a.sources[0].file, "kb/reports-skd.md");
    assert_eq!(
        a.sources[0].heading,
        "Программный вывод отчёта СКД в табличный документ"
    );
    assert!(a.text.contains("КомпоновщикМакетаКомпоновкиДанных"));
}

#[test]
fn exchange_plan_question() {
    let kb = kb();
    let hits = kb.search("как выбрать изменения плана обмена для узла", 3);
    assert_eq!(
        hits[0].passage.heading,
        "Планы обмена и регистрация изменений"
    );
}

#[test]
fn modal_dialog_question_in_english() {
    let kb = kb();
    let hits = kb.search("async question dialog Await in web client", 3);
    let heads: Vec<&str> = hits[..2]
        .iter()
        .map(|h| h.passage.heading.as_str())
        .collect();
    assert!(
        heads.contains(&"Асинхронные диалоги: ПоказатьВопрос, ОписаниеОповещения, Ждать"),
        "{heads:?}"
    );
    assert!(
        heads.contains(&"Клиент-серверное взаимодействие и асинхронность"),
        "{heads:?}"
    );
}
