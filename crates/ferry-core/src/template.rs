//! `${...}` placeholders in step parameters, filled in when a task is created.
//!
//! Supported: `${task_id}`, `${task_name}`, `${param.NAME}`; `$$` is a literal `$`.
//! Only string values are touched; the structure of the parameters never changes.

use std::collections::BTreeMap;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown placeholder `${{{0}}}` (known: task_id, task_name, param.NAME)")]
    UnknownPlaceholder(String),
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
            piece(Piece::Text("$"))?;
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
            Piece::Placeholder("task_id") => out.push_str(&ctx.task_id.to_string()),
            Piece::Placeholder("task_name") => out.push_str(ctx.task_name),
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
}
