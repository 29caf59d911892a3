//! A conservative check that an export's SQL can do nothing but read: exactly one statement,
//! and that statement a `SELECT` or `WITH` query.
//!
//! The check is lexical: it needs no SQL parser, so the coordinator can run it when a task is
//! created and every agent again before it runs the query, whatever engine runs it. Comments
//! and quoted strings and names are set aside first, and then the text is refused when it
//! holds a second statement, starts with anything but `SELECT` or `WITH`, holds a word that
//! changes data or state (`INSERT`, `DROP`, `SET`, `INTO`, ...) anywhere, or has a line that
//! starts with `!` (a command of the Hive CLI or beeline).
//!
//! Engines disagree on quoting: a backslash escapes a quote in Hive and Spark strings but not
//! in standard SQL; `$$...$$` is a string for DataFusion and PostgreSQL; `/* */` nests in
//! some; `#` starts a comment in others. Text that is inside a string under one set of rules
//! can be code under another, so the text is read under every combination of those rules, and
//! accepted only when every reading finds one read-only query. Erring this way refuses a few
//! odd but harmless queries (a column named `set`, an alias `AS update`); it never accepts a
//! write that one of the engines would run.

/// Why an export's SQL was refused. The messages name what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlGuardError {
    #[error("the SQL is empty: an export runs one SELECT or WITH query")]
    Empty,
    #[error("an export runs exactly one statement; found a second one: `{0}`")]
    SecondStatement(String),
    /// The first word changes data or state (`COPY`, `INSERT`, `DROP`, ...).
    #[error("`{0}` is not a read: an export runs one SELECT or WITH query")]
    NotARead(String),
    /// The first word (or symbol) is not `SELECT` or `WITH`.
    #[error("an export runs one SELECT or WITH query; this one starts with `{0}`")]
    NotAQuery(String),
    /// A word that changes data or state inside the query (`WITH a AS (...) INSERT ...`,
    /// `SELECT ... INTO t`).
    #[error("`{0}` inside the query is not a read: an export runs one SELECT or WITH query")]
    WriteInQuery(String),
    #[error("`{0}` is a command of the SQL shell (a line starting with `!`), not a query")]
    ShellCommand(String),
    #[error("unterminated {0}: an export runs one complete SELECT or WITH query")]
    Unterminated(&'static str),
}

/// Words that change data, schema or session state, or direct a result somewhere
/// (`INTO`, `OVERWRITE`). Refused wherever they appear outside strings and comments.
const WRITE_WORDS: &[&str] = &[
    "ADD",
    "ALTER",
    "ATTACH",
    "CALL",
    "COPY",
    "CREATE",
    "DELETE",
    "DETACH",
    "DFS",
    "DROP",
    "EXEC",
    "EXECUTE",
    "GRANT",
    "INSERT",
    "INSTALL",
    "INTO",
    "LOAD",
    "MERGE",
    "MSCK",
    "OVERWRITE",
    "PRAGMA",
    "PREPARE",
    "RENAME",
    "REPLACE",
    "RESET",
    "REVOKE",
    "SET",
    "TRUNCATE",
    "UNCACHE",
    "UNLOAD",
    "UPDATE",
    "UPSERT",
    "VACUUM",
];

/// Write words that are also common functions: `replace(s, 'a', 'b')` is a read.
const FUNCTION_WORDS: &[&str] = &["REPLACE", "TRUNCATE"];

/// How long a quoted piece of the SQL may be in an error message.
const SNIPPET_CHARS: usize = 60;

/// Checks that `sql` is exactly one read-only query (`SELECT ...` or `WITH ...`), with an
/// optional trailing `;`. See the module's documentation for what is refused and why.
pub fn check_read_only(sql: &str) -> Result<(), SqlGuardError> {
    // The shells act on a `!` line before any SQL parser sees it, inside a string or not.
    if let Some(line) = sql.lines().find(|l| l.trim_start().starts_with('!')) {
        return Err(SqlGuardError::ShellCommand(snippet(line)));
    }
    for rules in Rules::ALL {
        check_with(sql, rules)?;
    }
    Ok(())
}

/// One engine family's reading of quotes and comments.
#[derive(Debug, Clone, Copy)]
struct Rules {
    /// `\` escapes the next character inside `'...'` and `"..."` (Hive, Spark, MySQL).
    backslash: bool,
    /// `$$...$$` and `$tag$...$tag$` are strings (DataFusion, PostgreSQL).
    dollar: bool,
    /// `/* /* */ */` nests (DataFusion, PostgreSQL, Spark).
    nested: bool,
    /// `#` starts a comment to the end of the line (MySQL, sqlparser's Hive dialect).
    hash: bool,
}

impl Rules {
    /// Every combination; the standard reading first, so its messages are the ones shown.
    const ALL: [Rules; 16] = {
        let mut all = [Rules {
            backslash: false,
            dollar: false,
            nested: false,
            hash: false,
        }; 16];
        let mut i = 0;
        while i < 16 {
            all[i] = Rules {
                backslash: i & 1 != 0,
                dollar: i & 2 != 0,
                nested: i & 4 != 0,
                hash: i & 8 != 0,
            };
            i += 1;
        }
        all
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    /// A run of ASCII letters, digits and `_`: `start..end` in the text.
    Word(usize, usize),
    /// `;` at this offset.
    Semi(usize),
    LParen,
    /// A quoted string or name, whatever it holds.
    Quoted,
    /// Any other character, at this offset.
    Other(usize),
}

fn check_with(sql: &str, rules: Rules) -> Result<(), SqlGuardError> {
    let toks = tokenize(sql, rules)?;
    let Some(first) = toks.first() else {
        return Err(SqlGuardError::Empty);
    };
    // A `;` may end the query; nothing but whitespace and comments may follow it.
    let first_semi = toks.iter().enumerate().find_map(|(i, t)| match t {
        Tok::Semi(at) => Some((i, *at)),
        _ => None,
    });
    if let Some((i, at)) = first_semi
        && i + 1 < toks.len()
    {
        return Err(SqlGuardError::SecondStatement(snippet(&sql[at + 1..])));
    }
    match *first {
        Tok::Word(s, e) => {
            let word = sql[s..e].to_ascii_uppercase();
            if word != "SELECT" && word != "WITH" {
                return Err(if is_write_word(&word) {
                    SqlGuardError::NotARead(word)
                } else {
                    SqlGuardError::NotAQuery(sql[s..e].to_owned())
                });
            }
        }
        Tok::Semi(at) | Tok::Other(at) => {
            let head = sql[at..].split_whitespace().next().unwrap_or_default();
            return Err(SqlGuardError::NotAQuery(head.to_owned()));
        }
        Tok::LParen => return Err(SqlGuardError::NotAQuery("(".into())),
        Tok::Quoted => return Err(SqlGuardError::NotAQuery("a quoted string or name".into())),
    }
    for (i, tok) in toks.iter().enumerate().skip(1) {
        let Tok::Word(s, e) = *tok else { continue };
        let word = sql[s..e].to_ascii_uppercase();
        for candidate in word_readings(&word) {
            if !is_write_word(candidate) {
                continue;
            }
            let called =
                FUNCTION_WORDS.contains(&candidate) && toks.get(i + 1) == Some(&Tok::LParen);
            if !called {
                return Err(SqlGuardError::WriteInQuery(candidate.to_owned()));
            }
        }
    }
    Ok(())
}

fn is_write_word(word: &str) -> bool {
    WRITE_WORDS.contains(&word)
}

/// The word itself, and each tail that starts with a letter right after a digit: some lexers
/// end a number there (`1e5insert` is `1e5` and `insert` to one, a single name to another).
fn word_readings(word: &str) -> impl Iterator<Item = &str> {
    let b = word.as_bytes();
    std::iter::once(word).chain(
        (1..b.len())
            .filter(move |&i| b[i - 1].is_ascii_digit() && b[i].is_ascii_alphabetic())
            .map(move |i| &word[i..]),
    )
}

/// `text` with whitespace runs squeezed, cut to a readable length.
fn snippet(text: &str) -> String {
    let squeezed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if squeezed.chars().count() > SNIPPET_CHARS {
        let cut: String = squeezed.chars().take(SNIPPET_CHARS).collect();
        format!("{cut}...")
    } else {
        squeezed
    }
}

/// Splits `sql` into tokens under `rules`; comments and whitespace vanish, strings and
/// quoted names become [`Tok::Quoted`]. Works on bytes: every character that matters is
/// ASCII, and a byte of a multi-byte character never equals one.
fn tokenize(sql: &str, rules: Rules) -> Result<Vec<Tok>, SqlGuardError> {
    let b = sql.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            c if c.is_ascii_whitespace() => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => i = line_end(b, i),
            b'#' if rules.hash => i = line_end(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => i = block_comment_end(b, i, rules.nested)?,
            b'\'' => {
                i = quoted_end(b, i, rules.backslash)
                    .ok_or(SqlGuardError::Unterminated("string (`'`)"))?;
                toks.push(Tok::Quoted);
            }
            b'"' => {
                i = quoted_end(b, i, rules.backslash)
                    .ok_or(SqlGuardError::Unterminated("quoted name or string (`\"`)"))?;
                toks.push(Tok::Quoted);
            }
            b'`' => {
                i = quoted_end(b, i, false)
                    .ok_or(SqlGuardError::Unterminated("quoted name (`` ` ``)"))?;
                toks.push(Tok::Quoted);
            }
            b'$' if rules.dollar => match dollar_tag(b, i) {
                Some(tag_end) => {
                    let tag = &b[i..tag_end];
                    i = find(b, tag_end, tag)
                        .map(|at| at + tag.len())
                        .ok_or(SqlGuardError::Unterminated("dollar-quoted string (`$$`)"))?;
                    toks.push(Tok::Quoted);
                }
                None => {
                    toks.push(Tok::Other(i));
                    i += 1;
                }
            },
            b';' => {
                toks.push(Tok::Semi(i));
                i += 1;
            }
            b'(' => {
                toks.push(Tok::LParen);
                i += 1;
            }
            c if is_word_byte(c) => {
                let start = i;
                while i < b.len() && is_word_byte(b[i]) {
                    i += 1;
                }
                toks.push(Tok::Word(start, i));
            }
            _ => {
                toks.push(Tok::Other(i));
                // Past the whole character, so a snippet never starts inside one.
                i += utf8_len(c);
            }
        }
    }
    Ok(toks)
}

fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

/// Offset just past the line that `i` is on.
fn line_end(b: &[u8], i: usize) -> usize {
    b[i..]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(b.len(), |p| i + p + 1)
}

/// Offset just past the `/* ... */` that starts at `i`.
fn block_comment_end(b: &[u8], i: usize, nested: bool) -> Result<usize, SqlGuardError> {
    let mut depth = 0usize;
    let mut j = i;
    while j + 1 < b.len() {
        if b[j] == b'/' && b[j + 1] == b'*' && (nested || depth == 0) {
            depth += 1;
            j += 2;
        } else if b[j] == b'*' && b[j + 1] == b'/' {
            depth -= 1;
            j += 2;
            if depth == 0 {
                return Ok(j);
            }
        } else {
            j += 1;
        }
    }
    Err(SqlGuardError::Unterminated("comment (`/*`)"))
}

/// Offset just past the quoted text that starts at `i` with the quote `b[i]`; a doubled
/// quote stays inside (and reads the same as two adjacent literals where it is not an
/// escape). `None` when it never closes.
fn quoted_end(b: &[u8], i: usize, backslash: bool) -> Option<usize> {
    let quote = b[i];
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' if backslash => j += 2,
            c if c == quote => {
                if b.get(j + 1) == Some(&quote) {
                    j += 2;
                } else {
                    return Some(j + 1);
                }
            }
            _ => j += 1,
        }
    }
    None
}

/// The end of a dollar-quote opener at `i` (`$$` or `$tag$`), if one starts there.
fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    if b.get(j)
        .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
    {
        while b.get(j).is_some_and(|c| is_word_byte(*c)) {
            j += 1;
        }
    }
    (b.get(j) == Some(&b'$')).then_some(j + 1)
}

fn find(haystack: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(sql: &str) -> String {
        check_read_only(sql)
            .expect_err(&format!("refused: {sql}"))
            .to_string()
    }

    #[test]
    fn single_queries_are_accepted() {
        for sql in [
            "SELECT 1",
            "select * from t where dt = '2026-01-21'",
            "WITH a AS (SELECT 1) SELECT * FROM a",
            "SELECT ';' AS x",
            "SELECT 1;",
            "SELECT 1 ;  \n\t",
            "SELECT 1; -- done\n",
            "  -- the sample\nSELECT /* all */ * FROM t",
            "SELECT 'it''s', \"a;b\", `c;d` FROM t",
            "SELECT replace(s, 'a', 'b'), REPLACE (s, 'c', 'd') FROM t",
            "SELECT regexp_replace(x, '\\\\', '') FROM t",
            "SELECT create_time, updated_at, last_insert_id, date_add(d, 1) FROM t",
            "SELECT * FROM parquet.`/data/t` WHERE c = 'DROP TABLE t; INSERT'",
            "SELECT $1 + 1",
            "SELECT x -- INSERT INTO t\nFROM t",
            "SELECT 1 -- ends without a newline",
            "SELECT 'é;è' AS accents, 1e5 FROM t",
        ] {
            assert_eq!(check_read_only(sql), Ok(()), "{sql}");
        }
    }

    #[test]
    fn a_second_statement_is_refused_and_named() {
        assert_eq!(
            refused("SELECT 1; DROP TABLE t"),
            "an export runs exactly one statement; found a second one: `DROP TABLE t`"
        );
        // The `;` in the comment hides nothing: the next line starts a second statement.
        assert_eq!(
            refused("SELECT 1 -- ;\n; DROP TABLE t"),
            "an export runs exactly one statement; found a second one: `DROP TABLE t`"
        );
        assert_eq!(
            refused("SELECT 1 /* ; */ ; DELETE FROM t"),
            "an export runs exactly one statement; found a second one: `DELETE FROM t`"
        );
        assert!(refused("SELECT 1;;").contains("found a second one: `;`"));
        assert!(refused("SELECT 1;\nSELECT 2").contains("`SELECT 2`"));
        let long = format!("SELECT 1; SELECT '{}'", "x".repeat(200));
        assert!(refused(&long).ends_with("...`"), "{}", refused(&long));
    }

    #[test]
    fn only_select_and_with_may_start_the_query() {
        assert_eq!(
            refused("COPY (SELECT 1) TO '/tmp/x'"),
            "`COPY` is not a read: an export runs one SELECT or WITH query"
        );
        assert_eq!(
            refused("INSERT INTO t SELECT 1"),
            "`INSERT` is not a read: an export runs one SELECT or WITH query"
        );
        assert_eq!(
            refused("drop table t"),
            "`DROP` is not a read: an export runs one SELECT or WITH query"
        );
        assert_eq!(
            refused("SHOW TABLES"),
            "an export runs one SELECT or WITH query; this one starts with `SHOW`"
        );
        assert!(refused("EXPLAIN ANALYZE SELECT 1").contains("starts with `EXPLAIN`"));
        assert!(refused("(SELECT 1)").contains("starts with `(`"));
        assert_eq!(
            refused(" \n -- nothing\n"),
            "the SQL is empty: an export runs one SELECT or WITH query"
        );
        assert!(refused(";").contains("starts with `;`"));
    }

    #[test]
    fn writes_inside_a_query_are_refused() {
        for (sql, word) in [
            (
                "WITH a AS (SELECT 1) INSERT INTO t SELECT * FROM a",
                "INSERT",
            ),
            (
                "WITH a AS (DELETE FROM t RETURNING *) SELECT * FROM a",
                "DELETE",
            ),
            (
                "WITH a AS (SELECT 1) FROM a INSERT OVERWRITE TABLE t SELECT *",
                "INSERT",
            ),
            ("SELECT * INTO t2 FROM t", "INTO"),
            ("WITH a AS (SELECT 1) UPDATE t SET x = 1", "UPDATE"),
            ("WITH a AS (SELECT 1) MERGE INTO t USING a ON true", "MERGE"),
            (
                "SELECT 1 FROM t WHERE x IN (SELECT 1) AND 1e5insert",
                "INSERT",
            ),
            ("SELECT 1 FROM t FOR UPDATE", "UPDATE"),
        ] {
            assert_eq!(
                refused(sql),
                format!(
                    "`{word}` inside the query is not a read: an export runs one SELECT or WITH query"
                ),
                "{sql}"
            );
        }
    }

    #[test]
    fn shell_commands_are_refused() {
        assert_eq!(
            refused("!sh rm -rf /"),
            "`!sh rm -rf /` is a command of the SQL shell (a line starting with `!`), not a query"
        );
        // Even on a later line inside a string: the shell sees lines before SQL.
        assert!(refused("SELECT '\n  !sh rm -rf /\n' AS x").contains("`!sh rm -rf /`"));
        assert_eq!(check_read_only("SELECT 1 != 2"), Ok(()));
    }

    #[test]
    fn every_engine_s_quoting_is_considered() {
        // Standard SQL: the string ends at `\'`; Hive and Spark: the `\'` is escaped.
        for sql in [
            r"SELECT 'a\'; DROP TABLE t; --' AS x",
            r"SELECT 'a\' AS x, 1 FROM t; DROP TABLE t -- '",
            // DataFusion and PostgreSQL: a dollar-quoted string; elsewhere: code.
            "SELECT $$ ' $$; DROP TABLE t; -- '",
            // Nested comments (DataFusion, Spark) end later than flat ones (Hive).
            "SELECT 1 /* /* */ ; DROP TABLE t /* */",
            "SELECT 1 /* /* */ INSERT INTO t SELECT 2 */",
            // `#` comments out the rest of the line for some lexers only.
            "SELECT 1 # '\n; DROP TABLE t -- '",
        ] {
            assert!(check_read_only(sql).is_err(), "{sql}");
        }
        assert!(refused("SELECT 'open").starts_with("unterminated string"));
        assert!(refused("SELECT 1 /* open").starts_with("unterminated comment"));
        assert!(refused("SELECT `open").starts_with("unterminated quoted name"));
        assert!(refused("SELECT $$ open").starts_with("unterminated dollar-quoted"));
    }

    #[test]
    fn refusals_quote_what_was_found_whatever_the_characters() {
        assert!(refused("SELECT 1; ééé").contains("`ééé`"));
        assert!(refused("é SELECT 1").contains("starts with `é`"));
    }
}
