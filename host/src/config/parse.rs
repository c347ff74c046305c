//! TOML text to [`Config`], with every shape error found in one read.
//!
//! serde stops at the first value it cannot take. To list the others too,
//! the refused key is taken out of the document and the document read
//! again, until it reads or [`MAX_SHAPE_ERRORS`] are found. Taking a
//! required key out makes its table report it missing: that is not a new
//! problem, so the table goes too, and its other keys are not checked.

use serde_path_to_error::Segment;
use toml::de::DeValue;
use toml::{Table, Value};

use super::Config;

/// Most shape errors one read lists; past this many, the file is likely not
/// a hookgate config at all.
const MAX_SHAPE_ERRORS: usize = 20;

/// Parses `text`, or lists what is wrong with its shape (syntax, unknown
/// keys, values of the wrong type), one line each: the key path, its line
/// and column, then toml's message. Every round removes a key, so the
/// loop ends.
pub(super) fn parse(text: &str) -> Result<Config, Vec<String>> {
    // Nothing after a syntax error can be read: one problem.
    let document =
        toml::Deserializer::parse(text).map_err(|e| vec![located(text, None, &e, None)])?;
    let first = match serde_path_to_error::deserialize::<_, Config>(document) {
        Ok(config) => return Ok(config),
        Err(first) => first,
    };
    let mut problems = vec![located(text, shown(first.path()), first.inner(), None)];
    let Ok(document) = toml::from_str::<Table>(text) else {
        return Err(problems);
    };
    let mut document = Value::Table(document);
    let mut refused = vec![keys(first.path())];
    while problems.len() < MAX_SHAPE_ERRORS {
        let Some(at) = refused.last() else { break };
        if at.is_empty() || !remove(&mut document, at) {
            break;
        }
        let err = match serde_path_to_error::deserialize::<_, Config>(document.clone()) {
            Ok(_) => break,
            Err(err) => err,
        };
        let at = keys(err.path());
        if !is_knock_on(&at, err.inner().message(), &refused) {
            let unknown_key = err.inner().message().starts_with("unknown field");
            let start = start_of(text, &at, unknown_key);
            problems.push(located(text, shown(err.path()), err.inner(), start));
        }
        refused.push(at);
    }
    Err(problems)
}

/// Whether an error only reports a key that an earlier round took out.
fn is_knock_on(table: &[Key], message: &str, refused: &[Vec<Key>]) -> bool {
    let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    else {
        return false;
    };
    refused.iter().any(|gone| {
        gone.split_last()
            .is_some_and(|(last, parent)| parent == table && *last == Key::Name(field.into()))
    })
}

/// One step of a key path in the document.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Name(String),
    Index(usize),
}

/// The path's steps down to the first one that is not a plain key or index
/// (inside an internally tagged enum the steps below are not known): what
/// to take out is then that whole value.
fn keys(path: &serde_path_to_error::Path) -> Vec<Key> {
    path.iter()
        .map_while(|segment| match segment {
            Segment::Map { key } => Some(Key::Name(key.clone())),
            Segment::Seq { index } => Some(Key::Index(*index)),
            Segment::Enum { .. } | Segment::Unknown => None,
        })
        .collect()
}

/// Takes the value at `at` out of `value`; false when there is none.
fn remove(value: &mut Value, at: &[Key]) -> bool {
    let Some((key, rest)) = at.split_first() else {
        return false;
    };
    match (value, key) {
        (Value::Table(table), Key::Name(name)) if rest.is_empty() => table.remove(name).is_some(),
        (Value::Array(items), Key::Index(i)) if rest.is_empty() && *i < items.len() => {
            items.remove(*i);
            true
        }
        (Value::Table(table), Key::Name(name)) => {
            table.get_mut(name).is_some_and(|v| remove(v, rest))
        }
        (Value::Array(items), Key::Index(i)) => items.get_mut(*i).is_some_and(|v| remove(v, rest)),
        _ => false,
    }
}

/// The key path as people write it, or nothing for the document itself.
fn shown(path: &serde_path_to_error::Path) -> Option<String> {
    Some(path.to_string()).filter(|p| p != ".")
}

/// Where the value at `at` starts in `text` (its key, for an unknown key):
/// a document read again has no positions of its own.
fn start_of(text: &str, at: &[Key], unknown_key: bool) -> Option<usize> {
    let root = toml::de::DeTable::parse(text).ok()?;
    let (Key::Name(first), rest) = at.split_first()? else {
        return None;
    };
    let mut here = root.get_ref().get_key_value(first.as_str())?;
    for key in rest {
        here = match (here.1.get_ref(), key) {
            (DeValue::Table(table), Key::Name(name)) => table.get_key_value(name.as_str())?,
            (DeValue::Array(items), Key::Index(i)) => (here.0, items.get(*i)?),
            _ => return None,
        };
    }
    let (key, value) = here;
    Some(if unknown_key {
        key.span().start
    } else {
        value.span().start
    })
}

/// `path (line L, column C): message`, with whichever of the two places
/// is known; `start` stands in for the error's own position.
fn located(
    text: &str,
    path: Option<String>,
    err: &toml::de::Error,
    start: Option<usize>,
) -> String {
    let at = start
        .or_else(|| err.span().map(|span| span.start))
        .and_then(|start| text.get(..start))
        .map(|before| {
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}")
        });
    let message = err.message().trim_end().replace('\n', " ");
    match (path, at) {
        (Some(path), Some(at)) => format!("{path} ({at}): {message}"),
        (Some(path), None) => format!("{path}: {message}"),
        (None, Some(at)) => format!("{at}: {message}"),
        (None, None) => message,
    }
}
