//! BSL checker suites: broken snippets with one seeded mistake each (found
//! at the right line with the right rule) and correct snippets with no
//! diagnostics at all.

use ai_assistant::bsl::{check, check_query, rules, Severity};

/// (name, code, expected rule, expected line)
const BROKEN: &[(&str, &str, &str, usize)] = &[
    (
        "missing Тогда",
        "Процедура Проверить(Сумма)\n\tЕсли Сумма > 0\n\t\tСумма = 0;\n\tКонецЕсли;\nКонецПроцедуры\n",
        rules::SYNTAX_ERROR,
        2,
    ),
    (
        "missing КонецЦикла",
        "Процедура Обойти(Товары)\n\tИтог = 0;\n\tДля Каждого Строка Из Товары Цикл\n\t\tИтог = Итог + Строка.Сумма;\nКонецПроцедуры\n",
        rules::SYNTAX_ERROR,
        5,
    ),
    (
        "unclosed parenthesis",
        "Функция Сумма(А, Б)\n\tРезультат = (А + Б;\n\tВозврат Результат;\nКонецФункции\n",
        rules::SYNTAX_ERROR,
        2,
    ),
    (
        "query created and executed in a loop",
        "Процедура ЗаполнитьЦены(Товары)\n\tДля Каждого Строка Из Товары Цикл\n\t\tЗапрос = Новый Запрос(\"ВЫБРАТЬ Цена ИЗ РегистрСведений.Цены.СрезПоследних(, Номенклатура = &Н)\");\n\t\tЗапрос.УстановитьПараметр(\"Н\", Строка.Номенклатура);\n\t\tВыборка = Запрос.Выполнить().Выбрать();\n\tКонецЦикла;\nКонецПроцедуры\n",
        rules::QUERY_IN_LOOP,
        5,
    ),
    (
        "query executed in a Пока loop",
        "Процедура Обработать(Выборка)\n\tЗапрос = Новый Запрос;\n\tЗапрос.Текст = \"ВЫБРАТЬ 1 КАК Поле\";\n\tПока Выборка.Следующий() Цикл\n\t\tРезультат = Запрос.Выполнить();\n\tКонецЦикла;\nКонецПроцедуры\n",
        rules::QUERY_IN_LOOP,
        5,
    ),
    (
        "query created in a Для loop (executed elsewhere)",
        "Процедура Подготовить(Запросы)\n\tДля Индекс = 1 По 10 Цикл\n\t\tЗапросы.Добавить(Новый Запрос);\n\tКонецЦикла;\nКонецПроцедуры\n",
        rules::QUERY_IN_LOOP,
        3,
    ),
    (
        "English: query executed in For Each",
        "Procedure Fill(Rows)\n\tFor Each Row In Rows Do\n\t\tQuery = New Query;\n\t\tResult = Query.Execute();\n\tEndDo;\nEndProcedure\n",
        rules::QUERY_IN_LOOP,
        4,
    ),
    (
        "ТекущаяДата",
        "Процедура ПередЗаписью(Отказ)\n\tЕсли НЕ ЗначениеЗаполнено(Дата) Тогда\n\t\tДата = ТекущаяДата();\n\tКонецЕсли;\nКонецПроцедуры\n",
        rules::DEPRECATED_CURRENT_DATE,
        3,
    ),
    (
        "CurrentDate",
        "Procedure BeforeWrite(Cancel)\n\tThis = 1;\n\tStamp = CurrentDate();\nEndProcedure\n",
        rules::DEPRECATED_CURRENT_DATE,
        3,
    ),
    (
        "Сообщить",
        "Процедура Проверить(Склад)\n\tЕсли НЕ ЗначениеЗаполнено(Склад) Тогда\n\t\tСообщить(\"Не заполнен склад\");\n\tКонецЕсли;\nКонецПроцедуры\n",
        rules::DEPRECATED_MESSAGE,
        3,
    ),
    (
        "Message",
        "Procedure Check()\n\tMessage(\"done\");\nEndProcedure\n",
        rules::DEPRECATED_MESSAGE,
        2,
    ),
    (
        "НачатьТранзакцию inside Попытка",
        "Процедура Записать(Объект)\n\tПопытка\n\t\tНачатьТранзакцию();\n\t\tОбъект.Записать();\n\t\tЗафиксироватьТранзакцию();\n\tИсключение\n\t\tОтменитьТранзакцию();\n\t\tВызватьИсключение;\n\tКонецПопытки;\nКонецПроцедуры\n",
        rules::BEGIN_TRANSACTION_OUTSIDE_TRY,
        3,
    ),
    (
        "НачатьТранзакцию without Попытка",
        "Процедура Записать(Объект)\n\tНачатьТранзакцию();\n\tОбъект.Записать();\n\tЗафиксироватьТранзакцию();\nКонецПроцедуры\n",
        rules::BEGIN_TRANSACTION_OUTSIDE_TRY,
        2,
    ),
    (
        "ЗафиксироватьТранзакцию after КонецПопытки",
        "Процедура Записать(Объект)\n\tНачатьТранзакцию();\n\tПопытка\n\t\tОбъект.Записать();\n\tИсключение\n\t\tОтменитьТранзакцию();\n\t\tВызватьИсключение;\n\tКонецПопытки;\n\tЗафиксироватьТранзакцию();\nКонецПроцедуры\n",
        rules::COMMIT_TRANSACTION_OUTSIDE_TRY,
        9,
    ),
    (
        "empty Если",
        "Процедура Проверить(Сумма)\n\tЕсли Сумма > 100 Тогда\n\tКонецЕсли;\nКонецПроцедуры\n",
        rules::EMPTY_CODE_BLOCK,
        2,
    ),
    (
        "empty Иначе",
        "Функция Знак(Число)\n\tРезультат = 0;\n\tЕсли Число > 0 Тогда\n\t\tРезультат = 1;\n\tИначе\n\tКонецЕсли;\n\tВозврат Результат;\nКонецФункции\n",
        rules::EMPTY_CODE_BLOCK,
        5,
    ),
    (
        "empty loop",
        "Процедура Ждать(Выборка)\n\tПока Выборка.Следующий() Цикл\n\tКонецЦикла;\nКонецПроцедуры\n",
        rules::EMPTY_CODE_BLOCK,
        2,
    ),
    (
        "empty Исключение",
        "Процедура Обмен(Узел)\n\tПопытка\n\t\tВыполнитьОбмен(Узел);\n\tИсключение\n\tКонецПопытки;\nКонецПроцедуры\n",
        rules::EMPTY_EXCEPT_BLOCK,
        4,
    ),
    (
        "query text: trailing comma before ИЗ",
        "Функция Товары()\n\tЗапрос = Новый Запрос;\n\tЗапрос.Текст =\n\t\"ВЫБРАТЬ\n\t|\tТ.Ссылка,\n\t|ИЗ\n\t|\tСправочник.Номенклатура КАК Т\";\n\tВозврат Запрос.Выполнить().Выгрузить();\nКонецФункции\n",
        rules::QUERY_SYNTAX_ERROR,
        5,
    ),
    (
        "query text: unclosed virtual table parameters",
        "Функция Остатки(Склад)\n\tЗапрос = Новый Запрос;\n\tЗапрос.Текст = \"ВЫБРАТЬ О.Номенклатура ИЗ РегистрНакопления.ОстаткиТоваров.Остатки(, Склад = &Склад КАК О\";\n\tЗапрос.УстановитьПараметр(\"Склад\", Склад);\n\tВозврат Запрос.Выполнить().Выгрузить();\nКонецФункции\n",
        rules::QUERY_SYNTAX_ERROR,
        3,
    ),
    (
        "query text: incomplete ГДЕ",
        "Функция Найти(Код)\n\tЗапрос = Новый Запрос(\n\t\"ВЫБРАТЬ\n\t|\tТ.Ссылка\n\t|ИЗ\n\t|\tСправочник.Номенклатура КАК Т\n\t|ГДЕ\n\t|\tТ.Код = \");\n\tВозврат Запрос.Выполнить().Выбрать();\nКонецФункции\n",
        rules::QUERY_SYNTAX_ERROR,
        8,
    ),
    (
        "Выполнить of a string",
        "Процедура Запустить(ИмяМетода)\n\tВыполнить(ИмяМетода + \"()\");\nКонецПроцедуры\n",
        rules::EXECUTE_EXTERNAL_CODE,
        2,
    ),
    (
        "no ОтменитьТранзакцию in Исключение",
        "Процедура Записать(Объект)\n\tНачатьТранзакцию();\n\tПопытка\n\t\tОбъект.Записать();\n\t\tЗафиксироватьТранзакцию();\n\tИсключение\n\t\tЗаписьЖурналаРегистрации(\"Запись\", УровеньЖурналаРегистрации.Ошибка);\n\t\tВызватьИсключение;\n\tКонецПопытки;\nКонецПроцедуры\n",
        rules::MISSING_ROLLBACK,
        6,
    ),
    (
        "virtual table dimension filtered in ГДЕ",
        "Функция Остатки(Склад)\n\tЗапрос = Новый Запрос;\n\tЗапрос.Текст =\n\t\"ВЫБРАТЬ\n\t|\tОстатки.Номенклатура,\n\t|\tОстатки.КоличествоОстаток\n\t|ИЗ\n\t|\tРегистрНакопления.ОстаткиТоваров.Остатки КАК Остатки\n\t|ГДЕ\n\t|\tОстатки.Склад = &Склад\";\n\tЗапрос.УстановитьПараметр(\"Склад\", Склад);\n\tВозврат Запрос.Выполнить().Выгрузить();\nКонецФункции\n",
        rules::VIRTUAL_TABLE_FILTER_IN_WHERE,
        10,
    ),
    (
        "Функция without Возврат",
        "Функция ПолнаяСумма(Товары)\n\tИтог = 0;\n\tДля Каждого Строка Из Товары Цикл\n\t\tИтог = Итог + Строка.Сумма;\n\tКонецЦикла;\nКонецФункции\n",
        rules::FUNCTION_WITHOUT_RETURN,
        1,
    ),
    (
        "Процедура returning a value",
        "Процедура Проверить(Сумма)\n\tЕсли Сумма < 0 Тогда\n\t\tВозврат Ложь;\n\tКонецЕсли;\nКонецПроцедуры\n",
        rules::PROCEDURE_RETURNS_VALUE,
        3,
    ),
];

const CORRECT: &[(&str, &str)] = &[
    (
        "stock balances query",
        "Функция ОстаткиНаСкладе(Склад, ДатаОстатков) Экспорт\n\tЗапрос = Новый Запрос;\n\tЗапрос.Текст =\n\t\"ВЫБРАТЬ\n\t|\tОстатки.Номенклатура КАК Номенклатура,\n\t|\tОстатки.КоличествоОстаток КАК Количество\n\t|ИЗ\n\t|\tРегистрНакопления.ОстаткиТоваров.Остатки(&Дата, Склад = &Склад) КАК Остатки\n\t|ГДЕ\n\t|\tОстатки.КоличествоОстаток > 0\";\n\tЗапрос.УстановитьПараметр(\"Дата\", Новый Граница(КонецДня(ДатаОстатков), ВидГраницы.Включая));\n\tЗапрос.УстановитьПараметр(\"Склад\", Склад);\n\tВозврат Запрос.Выполнить().Выгрузить();\nКонецФункции\n",
    ),
    (
        "transaction pattern",
        "Процедура ЗаписатьВТранзакции(Объект) Экспорт\n\tНачатьТранзакцию();\n\tПопытка\n\t\tБлокировка = Новый БлокировкаДанных;\n\t\tЭлемент = Блокировка.Добавить(\"РегистрНакопления.ОстаткиТоваров\");\n\t\tЭлемент.Режим = РежимБлокировкиДанных.Исключительный;\n\t\tБлокировка.Заблокировать();\n\t\tОбъект.Записать();\n\t\tЗафиксироватьТранзакцию();\n\tИсключение\n\t\tОтменитьТранзакцию();\n\t\tЗаписьЖурналаРегистрации(\"Запись\", УровеньЖурналаРегистрации.Ошибка, , , ПодробноеПредставлениеОшибки(ИнформацияОбОшибке()));\n\t\tВызватьИсключение;\n\tКонецПопытки;\nКонецПроцедуры\n",
    ),
    (
        "one query, loop over the result",
        "Процедура ЗаполнитьЦены(Товары) Экспорт\n\tЗапрос = Новый Запрос;\n\tЗапрос.Текст = \"ВЫБРАТЬ Цены.Номенклатура, Цены.Цена ИЗ РегистрСведений.ЦеныНоменклатуры.СрезПоследних(, Номенклатура В (&Товары)) КАК Цены\";\n\tЗапрос.УстановитьПараметр(\"Товары\", Товары.ВыгрузитьКолонку(\"Номенклатура\"));\n\tЦены = Запрос.Выполнить().Выгрузить();\n\tДля Каждого Строка Из Товары Цикл\n\t\tНайдено = Цены.Найти(Строка.Номенклатура, \"Номенклатура\");\n\t\tСтрока.Цена = ?(Найдено = Неопределено, 0, Найдено.Цена);\n\tКонецЦикла;\nКонецПроцедуры\n",
    ),
    (
        "user message and session date",
        "&НаСервере\nПроцедура ПроверитьДату()\n\tЕсли Объект.Дата > ТекущаяДатаСеанса() Тогда\n\t\tСообщение = Новый СообщениеПользователю;\n\t\tСообщение.Текст = НСтр(\"ru = 'Дата в будущем'\");\n\t\tСообщение.Поле = \"Объект.Дата\";\n\t\tСообщение.Сообщить();\n\tКонецЕсли;\nКонецПроцедуры\n",
    ),
    (
        "comment in an intentionally empty branch",
        "Функция Категория(Сумма)\n\tЕсли Сумма > 1000 Тогда\n\t\tВозврат \"Крупная\";\n\tИначе\n\t\t// мелкие суммы не классифицируем\n\tКонецЕсли;\n\tВозврат \"\";\nКонецФункции\n",
    ),
    (
        "batch with temporary table",
        "Функция Нехватка(Ссылка) Экспорт\n\tЗапрос = Новый Запрос;\n\tЗапрос.Текст =\n\t\"ВЫБРАТЬ\n\t|\tТовары.Номенклатура КАК Номенклатура,\n\t|\tСУММА(Товары.Количество) КАК Количество\n\t|ПОМЕСТИТЬ ВТТовары\n\t|ИЗ\n\t|\tДокумент.РеализацияТоваровУслуг.Товары КАК Товары\n\t|ГДЕ\n\t|\tТовары.Ссылка = &Ссылка\n\t|СГРУППИРОВАТЬ ПО\n\t|\tТовары.Номенклатура\n\t|;\n\t|ВЫБРАТЬ\n\t|\tВТТовары.Номенклатура,\n\t|\tВТТовары.Количество - ЕСТЬNULL(Остатки.КоличествоОстаток, 0) КАК Нехватка\n\t|ИЗ\n\t|\tВТТовары КАК ВТТовары\n\t|\t\tЛЕВОЕ СОЕДИНЕНИЕ РегистрНакопления.ОстаткиТоваров.Остатки КАК Остатки\n\t|\t\tПО ВТТовары.Номенклатура = Остатки.Номенклатура\";\n\tЗапрос.УстановитьПараметр(\"Ссылка\", Ссылка);\n\tВозврат Запрос.ВыполнитьПакет();\nКонецФункции\n",
    ),
    (
        "English module",
        "Function Total(Rows) Export\n\tResult = 0;\n\tFor Each Row In Rows Do\n\t\tIf Row.Amount > 0 Then\n\t\t\tResult = Result + Row.Amount;\n\t\tEndIf;\n\tEndDo;\n\tReturn Result;\nEndFunction\n",
    ),
    (
        "loop calling a non-query Выполнить method",
        "Процедура Запустить(Обработчики)\n\tДля Каждого Обработчик Из Обработчики Цикл\n\t\tОбработчик.Выполнить();\n\tКонецЦикла;\nКонецПроцедуры\n",
    ),
    (
        "posting handler",
        "Процедура ОбработкаПроведения(Отказ, РежимПроведения)\n\tДвижения.ОстаткиТоваров.Записывать = Истина;\n\tДля Каждого Строка Из Товары Цикл\n\t\tДвижение = Движения.ОстаткиТоваров.ДобавитьРасход();\n\t\tДвижение.Период = Дата;\n\t\tДвижение.Склад = Склад;\n\t\tДвижение.Номенклатура = Строка.Номенклатура;\n\t\tДвижение.Количество = Строка.Количество;\n\tКонецЦикла;\nКонецПроцедуры\n",
    ),
];

#[test]
fn broken_snippets_are_found_at_the_seeded_line() {
    let mut failures = Vec::new();
    for (name, code, rule, line) in BROKEN {
        let diags = check(code);
        let hit = diags.iter().any(|d| d.rule == *rule && d.line == *line);
        if !hit {
            failures.push(format!(
                "{name}: expected {rule} at line {line}, got {diags:#?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn correct_snippets_have_no_diagnostics() {
    let mut failures = Vec::new();
    for (name, code) in CORRECT {
        let diags = check(code);
        if !diags.is_empty() {
            failures.push(format!("{name}: {diags:#?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn diagnostics_carry_severity_and_character_columns() {
    let d = check("Процедура А()\n\tДата = ТекущаяДата();\nКонецПроцедуры\n");
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].severity, Severity::Warning);
    assert_eq!((d[0].line, d[0].column), (2, 9));
    assert!(d[0].message.contains("ТекущаяДатаСеанса"));
}

#[test]
fn concatenated_query_text_is_not_validated() {
    let code = "Процедура А(Условие)\n\tЗапрос = Новый Запрос;\n\tЗапрос.Текст = \"ВЫБРАТЬ Т.Ссылка ИЗ Справочник.Номенклатура КАК Т ГДЕ \" + Условие;\nКонецПроцедуры\n";
    assert!(check(code).is_empty(), "{:?}", check(code));
}

#[test]
fn standalone_query_check() {
    assert!(check_query("ВЫБРАТЬ Т.Ссылка ИЗ Справочник.Номенклатура КАК Т").is_empty());
    let d = check_query("ВЫБРАТЬ\n\tТ.Ссылка,\nИЗ Справочник.Номенклатура КАК Т");
    assert!(
        d.iter()
            .any(|d| d.rule == rules::QUERY_SYNTAX_ERROR && d.line == 2),
        "{d:?}"
    );
}

#[test]
fn missing_block_end_names_the_opening_line() {
    let d = check("Процедура А(Т)\n\tДля Каждого С Из Т Цикл\n\t\tХ = 1;\nКонецПроцедуры\n");
    let e = d
        .iter()
        .find(|d| d.rule == rules::SYNTAX_ERROR)
        .expect("syntax error");
    assert_eq!((e.line, e.column), (4, 1));
    assert!(e.message.contains("КонецЦикла"), "{}", e.message);
    assert!(e.message.contains("строке 2"), "{}", e.message);
}

#[test]
fn virtual_table_rule_in_standalone_query() {
    let d = check_query(
        "ВЫБРАТЬ П.СуммаОборот ИЗ РегистрНакопления.Продажи.Обороты(&Начало, &Конец, Регистратор) КАК П\nГДЕ П.Организация = &Организация И П.СуммаОборот > 0 И П.Регистратор <> &Документ",
    );
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].rule, rules::VIRTUAL_TABLE_FILTER_IN_WHERE);
    assert_eq!((d[0].line, d[0].column), (2, 5));
    assert!(
        d[0].message.contains("Организация = &Организация"),
        "{}",
        d[0].message
    );
    // Slices of information registers are not judged (resources unknown).
    assert!(check_query(
        "ВЫБРАТЬ Ц.Цена ИЗ РегистрСведений.ЦеныНоменклатуры.СрезПоследних(&Дата) КАК Ц ГДЕ Ц.Цена > 0"
    )
    .is_empty());
}

#[test]
fn realistic_modules_are_clean() {
    for (name, code) in [
        (
            "object module with regions and #Если",
            include_str!("fixtures/object-module.bsl"),
        ),
        (
            "form module with Асинх/Ждать and notifications",
            include_str!("fixtures/form-module.bsl"),
        ),
    ] {
        let d = check(code);
        assert!(d.is_empty(), "{name}: {d:#?}");
    }
}

// ---- issue 17: real-shaped snippets -------------------------------------

fn errors(code: &str) -> Vec<ai_assistant::bsl::Diagnostic> {
    check(code)
        .into_iter()
        .filter(|d| d.severity == Severity::Error)
        .collect()
}

#[test]
fn rethrow_without_argument_inside_exception_handler_is_valid() {
    // Re-raise nested in Если inside the handler, and as the handler's last
    // statement without a semicolon: both valid 1C.
    let code = "Процедура ЗаписатьДанные(Данные) Экспорт\n\tНачатьТранзакцию();\n\tПопытка\n\t\tЗаписатьНаборЗаписей(Данные);\n\t\tЗафиксироватьТранзакцию();\n\tИсключение\n\t\tОтменитьТранзакцию();\n\t\tЕсли ТипЗнч(Данные) = Тип(\"Структура\") Тогда\n\t\t\tЗаписьЖурналаРегистрации(\"Обмен\", УровеньЖурналаРегистрации.Ошибка, , , ПодробноеПредставлениеОшибки(ИнформацияОбОшибке()));\n\t\t\tВызватьИсключение;\n\t\tКонецЕсли;\n\t\tВызватьИсключение\n\tКонецПопытки;\nКонецПроцедуры\n";
    assert!(check(code).is_empty(), "{:#?}", check(code));
    // Outside a handler it is still an error.
    let bad = "Процедура П()\n\tЕсли Истина Тогда\n\t\tВызватьИсключение;\n\tКонецЕсли;\nКонецПроцедуры\n";
    let d = errors(bad);
    assert!(
        d.iter()
            .any(|d| d.rule == rules::SYNTAX_ERROR && d.line == 3),
        "{d:#?}"
    );
}

#[test]
fn query_fragments_and_templates_are_not_checked_as_queries() {
    let code = r##"Функция ТекстЗапросаОстатков(ИмяТаблицы, ОграничиватьДоступ) Экспорт
	ТекстЗапроса =
	"ВЫБРАТЬ РАЗРЕШЕННЫЕ
	|	Т.Ссылка КАК Ссылка,
	|	&ПоляВыборки
	|ИЗ
	|	#Таблица КАК Т
	|ГДЕ
	|	&УсловиеОтбора";
	ТекстЗапроса = СтрЗаменить(ТекстЗапроса, "#Таблица", ИмяТаблицы);
	Если Не ОграничиватьДоступ Тогда
		ТекстЗапроса = СтрЗаменить(ТекстЗапроса, "ВЫБРАТЬ РАЗРЕШЕННЫЕ", "ВЫБРАТЬ");
	КонецЕсли;
	Шаблон = "ВЫБРАТЬ
	|	Т.Ссылка
	|ИЗ
	|	&ИмяТаблицы КАК Т
	|ГДЕ";
	Шаблон = Шаблон + " Т.ПометкаУдаления = ЛОЖЬ";
	Все = "ВЫБРАТЬ РАЗРЕШЕННЫЕ *";
	Вопрос = "ВЫБРАТЬ значение?";
	Процент = "ВЫБРАТЬ ПЕРВЫЕ %1 Т.Ссылка ИЗ %2 КАК Т";
	Возврат СтрШаблон(Процент, 10, ИмяТаблицы) + ТекстЗапроса + Шаблон + Все + Вопрос;
КонецФункции
"##;
    let d = check(code);
    assert!(d.is_empty(), "{d:#?}");
    // A whole query text that is broken is still reported.
    let broken = "Процедура П()\n\tЗапрос = Новый Запрос(\"ВЫБРАТЬ Т.Ссылка, ИЗ Справочник.Валюты КАК Т\");\n\tЗапрос.Выполнить();\nКонецПроцедуры\n";
    assert!(
        check(broken)
            .iter()
            .any(|d| d.rule == rules::QUERY_SYNTAX_ERROR && d.line == 2),
        "{:#?}",
        check(broken)
    );
    assert!(!ai_assistant::bsl::looks_like_query("ВЫБРАТЬ значение?"));
    assert!(ai_assistant::bsl::looks_like_query("ВЫБРАТЬ 1 КАК Поле"));
    assert!(ai_assistant::bsl::looks_like_query("ВЫБРАТЬ\n\tТ.Ссылка"));
    assert!(ai_assistant::bsl::looks_like_query("УНИЧТОЖИТЬ ВТТовары"));
}

#[test]
fn skip_check_annotation_suppresses_the_named_rule() {
    let code = "Процедура ОбновитьЦены(Товары)\n\tДля Каждого Строка Из Товары Цикл\n\t\tЗапрос = Новый Запрос(\"ВЫБРАТЬ 1 КАК Поле\");\n\t\t// @skip-check query-in-loop\n\t\tВыборка = Запрос.Выполнить().Выбрать();\n\t\tДата = ТекущаяДата(); //@skip-check use-non-recommended-method\n\t\tСообщить(Дата);\n\tКонецЦикла;\nКонецПроцедуры\n";
    let d = check(code);
    let rules_found: Vec<(&str, usize)> = d.iter().map(|d| (d.rule.as_str(), d.line)).collect();
    assert_eq!(rules_found, vec![(rules::DEPRECATED_MESSAGE, 7)], "{d:#?}");
    // Another rule named: the finding stays.
    let other = "Процедура П(Т)\n\tДля Каждого С Из Т Цикл\n\t\tЗапрос = Новый Запрос;\n\t\t// @skip-check empty-except-statement\n\t\tЗапрос.Выполнить();\n\tКонецЦикла;\nКонецПроцедуры\n";
    assert!(check(other).iter().any(|d| d.rule == rules::QUERY_IN_LOOP));
    // The reference linter's region form.
    let region = "// BSLLS:DeprecatedMessage-off\nПроцедура П()\n\tСообщить(1);\nКонецПроцедуры\n// BSLLS:DeprecatedMessage-on\nПроцедура Р()\n\tСообщить(2);\nКонецПроцедуры\n";
    let d = check(region);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(d[0].line, 7);
}

#[test]
fn query_in_loop_is_decided_by_object_type() {
    // Collection of Для Каждого runs once: not a finding.
    let once = "Процедура П()\n\tЗапрос = Новый Запрос(\"ВЫБРАТЬ Т.Ссылка ИЗ Справочник.Валюты КАК Т\");\n\tДля Каждого Строка Из Запрос.Выполнить().Выгрузить() Цикл\n\t\tОбработать(Строка);\n\tКонецЦикла;\nКонецПроцедуры\n";
    assert!(check(once).is_empty(), "{:#?}", check(once));
    // Named like a query but is not one; a query named otherwise is.
    let typed = "Процедура П(Обработчики)\n\tЗапросПользователя = Новый Структура(\"Выполнить\");\n\tПолучатель = Новый Запрос;\n\tПЗ = Новый ПостроительЗапроса;\n\tКопия = ПЗ;\n\tДля Каждого Обработчик Из Обработчики Цикл\n\t\tЗапросПользователя.Выполнить();\n\t\tПолучатель.Выполнить();\n\t\tКопия.Выполнить();\n\tКонецЦикла;\nКонецПроцедуры\n";
    let d: Vec<usize> = check(typed)
        .iter()
        .filter(|d| d.rule == rules::QUERY_IN_LOOP)
        .map(|d| d.line)
        .collect();
    assert_eq!(d, vec![8, 9], "{:#?}", check(typed));
    // Reassigned to something else: no longer a query.
    let reassigned = "Процедура П(Т)\n\tЗапрос = Новый Запрос;\n\tЗапрос = Обработки.Обмен.Создать();\n\tДля Каждого С Из Т Цикл\n\t\tЗапрос.Выполнить();\n\tКонецЦикла;\nКонецПроцедуры\n";
    assert!(check(reassigned).is_empty(), "{:#?}", check(reassigned));
    // Новый ПостроительОтчета in a loop.
    let builder = "Процедура П(Т)\n\tПока Т.Следующий() Цикл\n\t\tПостроитель = Новый ПостроительОтчета;\n\tКонецЦикла;\nКонецПроцедуры\n";
    assert!(check(builder)
        .iter()
        .any(|d| d.rule == rules::QUERY_IN_LOOP && d.line == 3));
}

#[test]
fn commit_must_be_the_last_statement_of_the_try_block() {
    let code = "Процедура П()\n\tНачатьТранзакцию();\n\tПопытка\n\t\tМетод();\n\t\tЗафиксироватьТранзакцию();\n\t\tМетод2();\n\tИсключение\n\t\tОтменитьТранзакцию();\n\t\tВызватьИсключение;\n\tКонецПопытки;\nКонецПроцедуры\n";
    let d = check(code);
    assert!(
        d.iter()
            .any(|d| d.rule == rules::COMMIT_TRANSACTION_OUTSIDE_TRY && d.line == 5),
        "{d:#?}"
    );
    // A comment after the commit is fine.
    let ok = "Процедура П()\n\tНачатьТранзакцию();\n\tПопытка\n\t\tМетод();\n\t\tЗафиксироватьТранзакцию();\n\t\t// готово\n\tИсключение\n\t\tОтменитьТранзакцию();\n\t\tВызватьИсключение;\n\tКонецПопытки;\nКонецПроцедуры\n";
    assert!(check(ok).is_empty(), "{:#?}", check(ok));
}
