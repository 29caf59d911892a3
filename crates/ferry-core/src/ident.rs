//! Table and partition names, validated: they are spliced into paths and SQL, so nothing but
//! plain identifiers gets through (no `a; DROP TABLE b`). The user's own SQL text is never
//! touched.

use std::fmt;

/// A name that is not a plain identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid identifier `{name}`: {reason}")]
pub struct IdentError {
    pub name: String,
    pub reason: String,
}

fn bad(name: &str, reason: &str) -> IdentError {
    IdentError {
        name: name.to_owned(),
        reason: reason.to_owned(),
    }
}

/// 1 to `max` letters, digits, `_`, `-` or one of `extra`: what workflow, step and pool
/// names may be.
pub fn is_plain_name(s: &str, max: usize, extra: &[char]) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || extra.contains(&c))
}

/// `[A-Za-z_][A-Za-z0-9_]*`, at most 128 characters.
pub fn check_identifier(name: &str) -> Result<(), IdentError> {
    let mut chars = name.chars();
    match chars.next() {
        None => return Err(bad(name, "empty")),
        Some(c) if !(c.is_ascii_alphabetic() || c == '_') => {
            return Err(bad(name, "must start with a letter or `_`"));
        }
        _ => {}
    }
    if name.len() > 128 {
        return Err(bad(name, "longer than 128 characters"));
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(bad(name, "only letters, digits and `_` are allowed"));
    }
    Ok(())
}

/// `db.table` (or `table`, in the `default` database).
/// Whether `db.table` matches a production-table pattern, where `*` matches any run of
/// characters (`prod.*`, `*.scores`, `db.table`); case-insensitive like Hive names.
pub fn table_matches(pattern: &str, table: &TableRef) -> bool {
    let name = format!("{}.{}", table.database, table.table).to_ascii_lowercase();
    let pattern = pattern.to_ascii_lowercase();
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut rest = name.as_str();
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else if let Some(at) = rest.find(part) {
            rest = &rest[at + part.len()..];
        } else {
            return false;
        }
    }
    rest.is_empty()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    pub database: String,
    pub table: String,
}

impl TableRef {
    pub fn parse(s: &str) -> Result<TableRef, IdentError> {
        let (database, table) = match s.split_once('.') {
            Some((d, t)) => (d, t),
            None => ("default", s),
        };
        check_identifier(database)
            .map_err(|_| bad(s, "the database part is not a plain identifier"))?;
        check_identifier(table).map_err(|_| bad(s, "the table part is not a plain identifier"))?;
        Ok(TableRef {
            database: database.to_ascii_lowercase(),
            table: table.to_ascii_lowercase(),
        })
    }
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.database, self.table)
    }
}

/// `column=value` of a Hive partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSpec {
    pub column: String,
    pub value: String,
}

impl PartitionSpec {
    pub fn parse(s: &str) -> Result<PartitionSpec, IdentError> {
        let (column, value) = s
            .split_once('=')
            .ok_or_else(|| bad(s, "expected column=value"))?;
        check_identifier(column)?;
        if value.is_empty() || value == "." || value == ".." {
            return Err(bad(s, "empty or relative partition value"));
        }
        if !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        {
            return Err(bad(
                s,
                "partition values may hold letters, digits and `-_.:` only",
            ));
        }
        Ok(PartitionSpec {
            column: column.to_ascii_lowercase(),
            value: value.to_owned(),
        })
    }

    /// The directory name, `column=value`.
    pub fn dir_name(&self) -> String {
        format!("{}={}", self.column, self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_patterns_match_whole_names() {
        let t = TableRef::parse("prod.campaign_scores").expect("table");
        assert!(table_matches("prod.*", &t));
        assert!(table_matches("*.campaign_scores", &t));
        assert!(table_matches("PROD.campaign_scores", &t));
        assert!(table_matches("*", &t));
        assert!(!table_matches("prod", &t));
        assert!(!table_matches("production.*", &t));
        assert!(!table_matches("prod.campaign", &t));
        assert!(table_matches("p*d.*scores", &t));
    }

    #[test]
    fn injection_through_names_is_refused() {
        assert!(TableRef::parse("prod.campaign_scores").is_ok());
        assert_eq!(
            TableRef::parse("scores").expect("ok").to_string(),
            "default.scores"
        );
        for evil in [
            "a; DROP TABLE b",
            "prod.x; DROP TABLE y",
            "../etc",
            "a b",
            "1abc",
            "x.y.z",
            "",
        ] {
            let err = TableRef::parse(evil).expect_err(evil);
            assert!(err.to_string().starts_with("invalid identifier"), "{err}");
        }
        assert!(PartitionSpec::parse("dt=2026-01-22").is_ok());
        for evil in [
            "dt=../../x",
            "dt=a/b",
            "dt='; DROP",
            "d t=1",
            "dt=",
            "dt=..",
        ] {
            assert!(PartitionSpec::parse(evil).is_err(), "{evil}");
        }
    }
}
