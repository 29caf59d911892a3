//! `${...}` placeholders in step parameters, filled in when a task is created.
//!
//! Supported: `${task_id}`, `${task_name}`, `${param.NAME}`, and in a run of a schedule or
//! a backfill its dates (`${ds}`, `${ds_nodash}`, `${prev_ds}`, `${next_ds}`,
//! `${logical_date}`, `${data_interval_start}`, `${data_interval_end}`: the run's task
//! parameters of the same names); `$$` is a literal `$`. Only string values are touched;
//! the structure of the parameters never changes.

use std::collections::BTreeMap;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "unknown placeholder `${{{0}}}` (known: task_id, task_name, param.NAME, and a scheduled run's dates: ds, ds_nodash, prev_ds, next_ds, logical_date, data_interval_start, data_interval_end)"
    )]
    UnknownPlaceholder(String),
    #[error(
        "`${{{0}}}` is a scheduled run's date: it is known only in tasks a schedule or a backfill creates"
    )]
    NotScheduled(String),
    #[error("task parameter `{0}` is used by the workflow but was not given")]
    MissingParam(String),
    #[error("unterminated `${{` in `{0}`")]
    Unterminated(String),
}

/// What placeholders are filled from.
pub struct TemplateContext<'a> {
    pub task_id: i64,
    pub task_name: &'a str,
    pub params: &'a BTreeMap<String, String>,
}

/// Returns `value` with every placeholder in its strings replaced.
pub fn render(value: &Value, ctx: &TemplateContext<'_>) -> Result<Value, TemplateError> {
    Ok(match value {
        Value::String(s) => Value::String(render_str(s, ctx)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render(v, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render(v, ctx)?)))
                .collect::<Result<_, TemplateError>>()?,
        ),
        other => other.clone(),
    })
}

/// `s` with each `${NAME}` whose NAME is in `values` replaced, and everything else (other
/// placeholders, `$$`) left as written: a scheduled run's dates filled into text that is
/// itself a template or taken literally later.
pub fn fill_in(s: &str, values: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let _ = scan(s, |piece| {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Escaped => out.push_str("$$"),
            Piece::Placeholder(name) => match values.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("${");
                    out.push_str(name);
                    out.push('}');
                }
            },
            // Its `$` comes next as text, then the rest as written.
            Piece::Unterminated => {}
        }
        Ok::<(), std::convert::Infallible>(())
    });
    out
}

/// [`fill_in`] on every string of `value`.
pub fn fill_in_value(value: &Value, values: &BTreeMap<String, String>) -> Value {
    match value {
        Value::String(s) => Value::String(fill_in(s, values)),
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| fill_in_value(v, values)).collect())
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), fill_in_value(v, values)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Names of the task parameters a value refers to, so task creation can check them up front.
pub fn referenced_params(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => {
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${param.") {
                let after = &rest[start + "${param.".len()..];
                match after.find('}') {
                    Some(end) => {
                        out.push(after[..end].to_owned());
                        rest = &after[end..];
                    }
                    None => break,
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| referenced_params(v, out)),
        Value::Object(map) => map.values().for_each(|v| referenced_params(v, out)),
        _ => {}
    }
}

/// One piece of a template string, as [`scan`] reads it.
pub(crate) enum Piece<'a> {
    /// Text copied as it is (a lone `$` included).
    Text(&'a str),
    /// `$$`: a literal `$`.
    Escaped,
    /// `${NAME}`: the name between the braces.
    Placeholder(&'a str),
    /// `${` with no `}` after it; the scan goes on after the `$`.
    Unterminated,
}

/// Reads `s` piece by piece: `$$` is a literal `$`, `${NAME}` a placeholder. The one reading
/// of the syntax, for rendering and for checks of a template before it is rendered.
pub(crate) fn scan<'a, E>(
    s: &'a str,
    mut piece: impl FnMut(Piece<'a>) -> Result<(), E>,
) -> Result<(), E> {
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        piece(Piece::Text(&rest[..pos]))?;
        let tail = &rest[pos + 1..];
        if let Some(after) = tail.strip_prefix('$') {
            piece(Piece::Escaped)?;
            rest = after;
        } else if let Some(body) = tail.strip_prefix('{') {
            match body.find('}') {
                Some(end) => {
                    piece(Piece::Placeholder(&body[..end]))?;
                    rest = &body[end + 1..];
                }
                None => {
                    piece(Piece::Unterminated)?;
                    piece(Piece::Text("$"))?;
                    rest = tail;
                }
            }
        } else {
            piece(Piece::Text("$"))?;
            rest = tail;
        }
    }
    piece(Piece::Text(rest))
}

fn render_str(s: &str, ctx: &TemplateContext<'_>) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(s.len());
    scan(s, |piece| {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Escaped => out.push('$'),
            Piece::Placeholder("task_id") => out.push_str(&ctx.task_id.to_string()),
            Piece::Placeholder("task_name") => out.push_str(ctx.task_name),
            Piece::Placeholder(name) if crate::schedule::PLACEHOLDER_NAMES.contains(&name) => out
                .push_str(
                    ctx.params
                        .get(name)
                        .ok_or_else(|| TemplateError::NotScheduled(name.to_owned()))?,
                ),
            Piece::Placeholder(name) => match name.strip_prefix("param.") {
                Some(param) => out.push_str(
                    ctx.params
                        .get(param)
                        .ok_or_else(|| TemplateError::MissingParam(param.to_owned()))?,
                ),
                None => return Err(TemplateError::UnknownPlaceholder(name.to_owned())),
            },
            Piece::Unterminated => return Err(TemplateError::Unterminated(s.to_owned())),
        }
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fills_placeholders_in_nested_strings_only() {
        let params = BTreeMap::from([("day".to_owned(), "2026-01-21".to_owned())]);
        let ctx = TemplateContext {
            task_id: 7,
            task_name: "nightly",
            params: &params,
        };
        let v = json!({"args": ["out/${task_id}/${param.day}.txt", "$$HOME", "$PATH"], "n": 3});
        let got = render(&v, &ctx).expect("renders");
        assert_eq!(
            got,
            json!({"args": ["out/7/2026-01-21.txt", "$HOME", "$PATH"], "n": 3})
        );
    }

    #[test]
    fn missing_and_unknown_placeholders_are_named() {
        let params = BTreeMap::new();
        let ctx = TemplateContext {
            task_id: 1,
            task_name: "t",
            params: &params,
        };
        assert_eq!(
            render(&json!("${param.day}"), &ctx),
            Err(TemplateError::MissingParam("day".into()))
        );
        assert_eq!(
            render(&json!("${home}"), &ctx),
            Err(TemplateError::UnknownPlaceholder("home".into()))
        );
        let mut names = Vec::new();
        referenced_params(&json!({"a": ["${param.x}-${param.y}"]}), &mut names);
        assert_eq!(names, vec!["x", "y"]);
    }

    #[test]
    fn fill_in_replaces_only_the_names_given() {
        let dates = BTreeMap::from([("ds".to_owned(), "2026-01-22".to_owned())]);
        assert_eq!(
            fill_in("dt='${ds}' $${ds} ${task_id} ${param.x} $5 ${", &dates),
            "dt='2026-01-22' $${ds} ${task_id} ${param.x} $5 ${"
        );
    }

    #[test]
    fn a_scheduled_runs_dates_are_known_in_its_tasks_only() {
        let params = BTreeMap::from([
            ("ds".to_owned(), "2026-01-22".to_owned()),
            ("ds_nodash".to_owned(), "20260122".to_owned()),
        ]);
        let ctx = TemplateContext {
            task_id: 1,
            task_name: "t",
            params: &params,
        };
        assert_eq!(
            render(&json!("dt='${ds}' AND p=${param.ds_nodash}"), &ctx),
            Ok(json!("dt='2026-01-22' AND p=20260122"))
        );
        let none = BTreeMap::new();
        let ctx = TemplateContext {
            task_id: 1,
            task_name: "t",
            params: &none,
        };
        assert_eq!(
            render(&json!("${prev_ds}"), &ctx),
            Err(TemplateError::NotScheduled("prev_ds".into()))
        );
    }
}
