//! A small owned tree of the parsed TOML with the byte offset of every key and value, and
//! the error collector that turns offsets into `FILE:LINE:COL`.

use cis490_api::ManifestError;

/// One TOML value and where it starts in the text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub at: usize,
    pub kind: Kind,
}

/// The shape of a value. Arrays of tables and inline arrays are both `Array`; tables and
/// inline tables are both `Table` (entries in file order).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Datetimes are kept as their TOML text.
    Datetime(String),
    Array(Vec<Node>),
    Table(Vec<Entry>),
}

/// One `key = value` of a table.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub key: String,
    pub key_at: usize,
    pub value: Node,
}

impl Kind {
    /// The TOML type name, for "expected X, found Y" messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Kind::Str(_) => "string",
            Kind::Int(_) => "integer",
            Kind::Float(_) => "float",
            Kind::Bool(_) => "boolean",
            Kind::Datetime(_) => "datetime",
            Kind::Array(_) => "array",
            Kind::Table(_) => "table",
        }
    }
}

impl Node {
    pub fn entries(&self) -> Option<&[Entry]> {
        match &self.kind {
            Kind::Table(entries) => Some(entries),
            _ => None,
        }
    }
}

/// Finds `key` in a table's entries.
pub(crate) fn find<'a>(entries: &'a [Entry], key: &str) -> Option<&'a Entry> {
    entries.iter().find(|e| e.key == key)
}

fn start(span: Option<std::ops::Range<usize>>) -> Option<usize> {
    span.map(|r| r.start)
}

/// Converts a parsed document's root table. `fallback` is used where toml_edit knows no
/// span (implicit tables made by dotted keys or `[a.b]` headers).
pub(crate) fn from_table_like(table: &dyn toml_edit::TableLike, at: usize) -> Node {
    let mut entries = Vec::new();
    for (name, _) in table.iter() {
        let Some((key, item)) = table.get_key_value(name) else {
            continue;
        };
        let key_at = start(key.span()).unwrap_or(at);
        let value = from_item(item, key_at);
        entries.push(Entry {
            key: name.to_string(),
            key_at,
            value,
        });
    }
    Node {
        at,
        kind: Kind::Table(entries),
    }
}

fn from_item(item: &toml_edit::Item, fallback: usize) -> Node {
    let at = start(item.span()).unwrap_or(fallback);
    match item {
        toml_edit::Item::None => Node {
            at,
            kind: Kind::Table(Vec::new()),
        },
        toml_edit::Item::Value(value) => from_value(value, fallback),
        toml_edit::Item::Table(table) => from_table_like(table, at),
        toml_edit::Item::ArrayOfTables(tables) => Node {
            at,
            kind: Kind::Array(
                tables
                    .iter()
                    .map(|t| from_table_like(t, start(t.span()).unwrap_or(at)))
                    .collect(),
            ),
        },
    }
}

fn from_value(value: &toml_edit::Value, fallback: usize) -> Node {
    let at = start(value.span()).unwrap_or(fallback);
    let kind = match value {
        toml_edit::Value::String(s) => Kind::Str(s.value().clone()),
        toml_edit::Value::Integer(i) => Kind::Int(*i.value()),
        toml_edit::Value::Float(f) => Kind::Float(*f.value()),
        toml_edit::Value::Boolean(b) => Kind::Bool(*b.value()),
        toml_edit::Value::Datetime(d) => Kind::Datetime(d.value().to_string()),
        toml_edit::Value::Array(array) => {
            Kind::Array(array.iter().map(|v| from_value(v, at)).collect())
        }
        toml_edit::Value::InlineTable(table) => return from_table_like(table, at),
    };
    Node { at, kind }
}

/// Collects errors and warnings with their positions while the manifest is validated.
pub(crate) struct Diagnostics<'a> {
    path: String,
    text: &'a str,
    /// Byte offset of the start of each line, so a position costs a binary search, not a
    /// scan of the text before it (a big manifest can carry thousands of warnings).
    line_starts: Vec<usize>,
    pub errors: Vec<(usize, ManifestError)>,
    /// Each distinct warning once, in the order first given.
    pub warnings: Vec<(usize, String)>,
    /// Position and message of each of `warnings`: a matrix repeats its entry's checks for
    /// every combination, and a pinned entry of a big sweep would otherwise format and hold
    /// one copy per job until the end.
    warned: std::collections::HashSet<(usize, String)>,
    /// The last position whose column was counted: (its line's start, the position, its
    /// 0-based column in characters). Positions come mostly in file order, so the next one
    /// on the same line counts only the characters after it: a one-line array of 200,000
    /// hosts (a warning each) costs a pass over the line, not one per warning.
    last_column: std::cell::Cell<(usize, usize, usize)>,
}

impl<'a> Diagnostics<'a> {
    pub fn new(path: String, text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            path,
            text,
            line_starts,
            errors: Vec::new(),
            warnings: Vec::new(),
            warned: std::collections::HashSet::new(),
            last_column: std::cell::Cell::new((0, 0, 0)),
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, at: usize) -> (u32, u32) {
        let mut at = at.min(self.text.len());
        while !self.text.is_char_boundary(at) {
            at -= 1;
        }
        // The last line start at or before `at` (a '\n' at `at` belongs to its line).
        let line = self.line_starts.partition_point(|&start| start <= at);
        let line_start = self.line_starts[line.saturating_sub(1)];
        let (cached_line, cached_at, cached_column) = self.last_column.get();
        let column = if cached_line == line_start && cached_at <= at {
            cached_column + self.text[cached_at..at].chars().count()
        } else {
            self.text[line_start..at].chars().count()
        };
        self.last_column.set((line_start, at, column));
        let column = column + 1;
        (
            u32::try_from(line).unwrap_or(u32::MAX),
            u32::try_from(column).unwrap_or(u32::MAX),
        )
    }

    /// `FILE:LINE:COL` of a byte offset.
    pub fn location(&self, at: usize) -> String {
        let (line, column) = self.line_col(at);
        format!("{}:{line}:{column}", self.path)
    }

    pub fn error(&mut self, at: usize, message: impl Into<String>) {
        let (line, column) = self.line_col(at);
        self.errors.push((
            at,
            ManifestError {
                path: self.path.clone(),
                line: Some(line),
                column: Some(column),
                message: message.into(),
            },
        ));
    }

    pub fn warning(&mut self, at: usize, message: impl Into<String>) {
        let key = (at, message.into());
        if self.warned.contains(&key) {
            return;
        }
        let text = format!("{}: {}", self.location(at), key.1);
        self.warned.insert(key);
        self.warnings.push((at, text));
    }

    /// Errors and warnings in file order, each reported once (a matrix repeats the checks of
    /// its entry for every combination).
    pub fn finish(mut self) -> (Vec<ManifestError>, Vec<String>) {
        self.errors.sort_by_key(|(at, _)| *at);
        let mut errors: Vec<ManifestError> = Vec::new();
        for (_, e) in self.errors {
            if !errors.contains(&e) {
                errors.push(e);
            }
        }
        // Stable: warnings at one position stay in the order given. Repeats never got in.
        self.warnings.sort_by_key(|(at, _)| *at);
        let warnings = self.warnings.into_iter().map(|(_, w)| w).collect();
        (errors, warnings)
    }
}
