//! `embed-order`: a transform that turns a store's order notification,
//! written for humans as a Discord-style embed, into the order record an
//! order system can use.
//!
//! In (the parts it reads):
//!
//! ```json
//! {"embeds": [{"title": "New order #1042", "timestamp": "2026-11-23T10:00:00Z",
//!   "fields": [{"name": "Customer", "value": "Ada Lovelace"},
//!              {"name": "Total", "value": "€42.50"},
//!              {"name": "Items", "value": "2x Tea\n1x Scone"}]}]}
//! ```
//!
//! Out: `{"order_id":"1042","customer":"Ada Lovelace","total":{"amount":"42.50",
//! "currency":"EUR"},"items":[{"quantity":2,"name":"Tea"},{"quantity":1,"name":"Scone"}],
//! "placed_at":"2026-11-23T10:00:00Z"}` with `content-type: application/json`,
//! to the route's first destination.
//!
//! Field names are matched without regard to case. The amount is kept as
//! the text the store wrote (no float rounding on money). A notification
//! this cannot read (no embed, no `#<number>` in the title, a missing
//! field, an item line that is not `<n>x <name>`) is an `err` naming what
//! is wrong: the route dead-letters it, and a fixed plugin can replay it.
//! No config.

wit_bindgen::generate!({ path: "../../wit", world: "transformer" });

use exports::hookgate::plugin::transform::{Guest, Outgoing, Webhook};
use serde::{Deserialize, Serialize};

struct EmbedOrder;

impl Guest for EmbedOrder {
    fn transform(hook: Webhook) -> Result<Vec<Outgoing>, String> {
        let order = parse(&hook.body)?;
        let body = serde_json::to_vec(&order).map_err(|e| e.to_string())?;
        Ok(vec![Outgoing {
            destination: None,
            method: Some("POST".to_string()),
            path: None,
            query: None,
            headers: Some(vec![(
                "content-type".to_string(),
                b"application/json".to_vec(),
            )]),
            body: Some(body),
            deliver_at: None,
            max_attempts: None,
        }])
    }
}

export!(EmbedOrder);

#[derive(Deserialize)]
struct Notification {
    #[serde(default)]
    embeds: Vec<Embed>,
}

#[derive(Deserialize)]
struct Embed {
    #[serde(default)]
    title: String,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    fields: Vec<Field>,
}

#[derive(Deserialize)]
struct Field {
    name: String,
    value: String,
}

#[derive(Debug, PartialEq, Serialize)]
struct Order {
    order_id: String,
    customer: String,
    total: Money,
    items: Vec<Item>,
    placed_at: Option<String>,
}

#[derive(Debug, PartialEq, Serialize)]
struct Money {
    amount: String,
    currency: String,
}

#[derive(Debug, PartialEq, Serialize)]
struct Item {
    quantity: u32,
    name: String,
}

fn parse(body: &[u8]) -> Result<Order, String> {
    let notification: Notification =
        serde_json::from_slice(body).map_err(|e| format!("not an embed notification: {e}"))?;
    let embed = notification
        .embeds
        .into_iter()
        .next()
        .ok_or("the notification has no embed")?;
    let field = |name: &str| {
        embed
            .fields
            .iter()
            .find(|f| f.name.trim().eq_ignore_ascii_case(name))
            .map(|f| f.value.trim())
            .ok_or(format!("the embed has no {name:?} field"))
    };
    Ok(Order {
        order_id: order_id(&embed.title)?,
        customer: field("customer")?.to_string(),
        total: money(field("total")?)?,
        items: field("items")?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(item)
            .collect::<Result<_, _>>()?,
        placed_at: embed.timestamp.clone(),
    })
}

/// The digits after the first `#` in the title.
fn order_id(title: &str) -> Result<String, String> {
    let digits: String = title
        .split_once('#')
        .map(|(_, rest)| rest.chars().take_while(char::is_ascii_digit).collect())
        .unwrap_or_default();
    if digits.is_empty() {
        Err(format!(
            "no order number (#<digits>) in the title {title:?}"
        ))
    } else {
        Ok(digits)
    }
}

/// `€42.50`, `$3`, `£1.20`, `42.50 EUR`, `EUR 42.50`.
fn money(text: &str) -> Result<Money, String> {
    let symbols = [('€', "EUR"), ('$', "USD"), ('£', "GBP")];
    let (amount, currency) =
        if let Some((symbol, code)) = symbols.iter().find(|(s, _)| text.starts_with(*s)) {
            (text[symbol.len_utf8()..].trim(), code.to_string())
        } else {
            let mut parts = text.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) if is_code(b) => (a, b.to_string()),
                (Some(a), Some(b), None) if is_code(a) => (b, a.to_string()),
                _ => return Err(format!("cannot read the total {text:?}")),
            }
        };
    let valid = !amount.is_empty()
        && amount.chars().all(|c| c.is_ascii_digit() || c == '.')
        && amount.matches('.').count() <= 1;
    if valid {
        Ok(Money {
            amount: amount.to_string(),
            currency,
        })
    } else {
        Err(format!("cannot read the total {text:?}"))
    }
}

fn is_code(text: &str) -> bool {
    text.len() == 3 && text.chars().all(|c| c.is_ascii_uppercase())
}

/// `2x Tea` -> 2 of "Tea".
fn item(line: &str) -> Result<Item, String> {
    let line = line.trim();
    let parsed = line.split_once(['x', 'X']).and_then(|(n, name)| {
        let quantity = n.trim().parse::<u32>().ok().filter(|q| *q > 0)?;
        let name = name.trim();
        (!name.is_empty()).then(|| Item {
            quantity,
            name: name.to_string(),
        })
    });
    parsed.ok_or(format!(
        "cannot read the item line {line:?} (expected \"<n>x <name>\")"
    ))
}

// Pure logic only: these run on the host target with `cargo test`.
#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"embeds":[{"title":"New order #1042","timestamp":"2026-11-23T10:00:00Z",
        "fields":[{"name":"Customer","value":"Ada Lovelace"},{"name":"TOTAL","value":"€42.50"},
        {"name":"Items","value":"2x Tea\n1x Scone"}]}]}"#;

    #[test]
    fn an_embed_becomes_an_order() {
        let order = parse(SAMPLE.as_bytes()).expect("parses");
        assert_eq!(order.order_id, "1042");
        assert_eq!(order.customer, "Ada Lovelace");
        assert_eq!(
            order.total,
            Money {
                amount: "42.50".into(),
                currency: "EUR".into()
            }
        );
        assert_eq!(order.items.len(), 2);
        assert_eq!(
            order.items[1],
            Item {
                quantity: 1,
                name: "Scone".into()
            }
        );
    }

    #[test]
    fn totals_come_in_several_spellings() {
        for (text, amount, currency) in [
            ("$3", "3", "USD"),
            ("42.50 EUR", "42.50", "EUR"),
            ("GBP 1.20", "1.20", "GBP"),
        ] {
            assert_eq!(
                money(text),
                Ok(Money {
                    amount: amount.into(),
                    currency: currency.into()
                })
            );
        }
        for bad in ["", "€", "forty", "1.2.3 EUR", "12 euro"] {
            assert!(money(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn what_it_cannot_read_is_named() {
        assert!(parse(b"{}").unwrap_err().contains("no embed"));
        let no_number = SAMPLE.replace("#1042", "today");
        assert!(
            parse(no_number.as_bytes())
                .unwrap_err()
                .contains("no order number")
        );
        let bad_item = SAMPLE.replace("2x Tea", "some tea");
        assert!(
            parse(bad_item.as_bytes())
                .unwrap_err()
                .contains("item line")
        );
    }
}
