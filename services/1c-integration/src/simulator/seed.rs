//! Seed data: a small wholesale food business with realistic Russian names.

use serde_json::{json, Value};
use uuid::Uuid;

use super::store::{Row, Store, StoreError};
use crate::odata::metadata::Metadata;

/// Deterministic "random-looking" GUIDs so a fresh simulator always has the
/// same keys (tests and documentation can refer to them).
pub fn seed_guid(n: u64) -> String {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let hi = mix(n) & 0xffff_ffff_ffff_0fff | 0x4000; // version 4 nibble
    let lo = mix(n ^ 0xdead_beef) & 0x3fff_ffff_ffff_ffff | 0x8000_0000_0000_0000;
    Uuid::from_u64_pair(hi, lo).to_string()
}

fn obj(v: Value) -> Row {
    v.as_object().cloned().expect("seed rows are objects")
}

pub fn seed(s: &mut Store, meta: &Metadata) -> Result<(), StoreError> {
    let mut n = 0u64;
    let mut next = || {
        n += 1;
        seed_guid(n)
    };
    // Warehouses.
    let main_wh = next();
    let spb_wh = next();
    for (key, name, addr) in [
        (
            &main_wh,
            "Основной склад",
            "г. Москва, ул. Складочная, д. 1, стр. 3",
        ),
        (
            &spb_wh,
            "Склад Санкт-Петербург",
            "г. Санкт-Петербург, Московское ш., д. 25",
        ),
    ] {
        s.create(
            meta,
            "Catalog_Склады",
            &obj(json!({"Ref_Key": key, "Description": name, "Адрес": addr})),
        )?;
    }
    // Counterparties.
    let mut partners = Vec::new();
    for (name, full, inn, kpp, kind) in [
        (
            "Ромашка ООО",
            "Общество с ограниченной ответственностью \"Ромашка\"",
            "7701234567",
            "770101001",
            "ЮридическоеЛицо",
        ),
        (
            "Молочный комбинат \"Заречье\" АО",
            "Акционерное общество \"Молочный комбинат «Заречье»\"",
            "5003012345",
            "500301001",
            "ЮридическоеЛицо",
        ),
        (
            "Хлебозавод №5 ПАО",
            "Публичное акционерное общество \"Хлебозавод №5\"",
            "7725098765",
            "772501001",
            "ЮридическоеЛицо",
        ),
        (
            "Иванов Иван Иванович ИП",
            "Индивидуальный предприниматель Иванов Иван Иванович",
            "500100732259",
            "",
            "ФизическоеЛицо",
        ),
        (
            "Вектор Плюс ООО",
            "Общество с ограниченной ответственностью \"Вектор Плюс\"",
            "7810456789",
            "781001001",
            "ЮридическоеЛицо",
        ),
        (
            "Сеть магазинов \"Пятёрочка у дома\" ООО",
            "Общество с ограниченной ответственностью \"Продторг\"",
            "7838112233",
            "783801001",
            "ЮридическоеЛицо",
        ),
    ] {
        let key = next();
        s.create(
            meta,
            "Catalog_Контрагенты",
            &obj(
                json!({"Ref_Key": key, "Description": name, "НаименованиеПолное": full,
                        "ИНН": inn, "КПП": kpp, "ЮридическоеФизическоеЛицо": kind}),
            ),
        )?;
        partners.push(key);
    }
    // Goods, in two folders.
    let food = next();
    let household = next();
    s.create(
        meta,
        "Catalog_Номенклатура",
        &obj(json!({"Ref_Key": food, "Description": "Продукты питания", "IsFolder": true})),
    )?;
    s.create(
        meta,
        "Catalog_Номенклатура",
        &obj(
            json!({"Ref_Key": household, "Description": "Хозяйственные товары", "IsFolder": true}),
        ),
    )?;
    let mut goods = Vec::new();
    for (folder, name, art, unit, vat) in [
        (
            &food,
            "Молоко пастеризованное 3,2% 1 л",
            "МЛК-032",
            "шт",
            "НДС10",
        ),
        (&food, "Кефир 2,5% 0,9 л", "КФР-025", "шт", "НДС10"),
        (&food, "Хлеб «Бородинский» 400 г", "ХЛБ-400", "шт", "НДС10"),
        (&food, "Сахар-песок 1 кг", "СХР-001", "кг", "НДС10"),
        (
            &food,
            "Крупа гречневая ядрица 900 г",
            "ГРЧ-900",
            "шт",
            "НДС10",
        ),
        (&food, "Чай чёрный листовой 100 г", "ЧАЙ-100", "шт", "НДС20"),
        (
            &food,
            "Кофе молотый «Арабика» 250 г",
            "КОФ-250",
            "шт",
            "НДС20",
        ),
        (
            &food,
            "Масло сливочное 82,5% 180 г",
            "МСЛ-180",
            "шт",
            "НДС10",
        ),
        (
            &household,
            "Мыло хозяйственное 72% 200 г",
            "МЫЛ-072",
            "шт",
            "НДС20",
        ),
        (
            &household,
            "Губка для посуды (10 шт.)",
            "ГУБ-010",
            "уп",
            "НДС20",
        ),
    ] {
        let key = next();
        s.create(
            meta,
            "Catalog_Номенклатура",
            &obj(
                json!({"Ref_Key": key, "Parent_Key": folder, "Description": name, "Артикул": art,
                        "ЕдиницаИзмерения": unit, "СтавкаНДС": vat}),
            ),
        )?;
        goods.push(key);
    }
    // Prices (periodic information register).
    let prices = [
        89.9, 79.5, 54.0, 72.3, 109.0, 189.0, 459.0, 219.0, 39.9, 149.0,
    ];
    for (g, p) in goods.iter().zip(prices) {
        for (period, price) in [
            ("2024-01-01T00:00:00", p),
            (
                "2024-03-01T00:00:00",
                (p * 1.07 * 100.0_f64).round() / 100.0,
            ),
        ] {
            s.create(
                meta,
                "InformationRegister_ЦеныНоменклатуры",
                &obj(json!({"Period": period, "Номенклатура_Key": g, "Цена": price, "Валюта": "RUB"})),
            )?;
        }
    }
    // Receipts (posted) and sales (two posted, one draft).
    let line = |g: &String, qty: f64, price: f64| json!({"Номенклатура_Key": g, "Количество": qty, "Цена": price, "СтавкаНДС": "НДС10"});
    let docs = [
        (
            "Document_ПоступлениеТоваровУслуг",
            "2024-02-01T09:30:00",
            &partners[1],
            &main_wh,
            true,
            vec![
                line(&goods[0], 500.0, 62.0),
                line(&goods[1], 300.0, 55.0),
                line(&goods[7], 200.0, 160.0),
            ],
            "Поставка молочной продукции",
        ),
        (
            "Document_ПоступлениеТоваровУслуг",
            "2024-02-02T11:00:00",
            &partners[2],
            &main_wh,
            true,
            vec![line(&goods[2], 400.0, 38.0)],
            "Хлеб, еженедельная поставка",
        ),
        (
            "Document_ПоступлениеТоваровУслуг",
            "2024-02-05T15:45:00",
            &partners[4],
            &spb_wh,
            true,
            vec![
                line(&goods[3], 1000.0, 51.0),
                line(&goods[4], 600.0, 80.0),
                line(&goods[5], 150.0, 120.0),
                line(&goods[6], 80.0, 310.0),
                line(&goods[8], 240.0, 22.0),
                line(&goods[9], 120.0, 95.0),
            ],
            "",
        ),
        (
            "Document_РеализацияТоваровУслуг",
            "2024-02-10T10:15:00",
            &partners[0],
            &main_wh,
            true,
            vec![line(&goods[0], 120.0, 89.9), line(&goods[2], 60.0, 54.0)],
            "Отгрузка по договору № 15/24",
        ),
        (
            "Document_РеализацияТоваровУслуг",
            "2024-02-12T16:20:00",
            &partners[5],
            &spb_wh,
            true,
            vec![line(&goods[3], 250.0, 72.3), line(&goods[6], 12.0, 459.0)],
            "",
        ),
        (
            "Document_РеализацияТоваровУслуг",
            "2024-02-14T12:00:00",
            &partners[3],
            &main_wh,
            false,
            vec![line(&goods[7], 30.0, 219.0)],
            "Черновик, ждём предоплату",
        ),
    ];
    for (set, date, partner, wh, posted, lines, comment) in docs {
        let key = next();
        s.create(
            meta,
            set,
            &obj(
                json!({"Ref_Key": key, "Date": date, "Контрагент_Key": partner, "Склад_Key": wh,
                        "Posted": posted, "Товары": lines, "Комментарий": comment}),
            ),
        )?;
    }
    Ok(())
}
