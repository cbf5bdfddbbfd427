//! Property tests over hostile manifests: arbitrary bytes, mutations of a valid manifest,
//! and arbitrary TOML documents shaped like manifests (so that the checks past the TOML
//! parser run too), with strings of 65,536 characters and more, odd names and extreme
//! numbers. Whatever the input: no panic (in parsing, validation or `check`'s rendering);
//! every error has a line and column inside the text; every accepted name is one the
//! store can take.
//!
//! `PROPTEST_CASES` sets the number of inputs per property (the README's "Reliability"
//! section records a run of 100,000); the default keeps `cargo test` quick.

use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::{manifest_text, parse_manifest, LoadedManifest};
use crate::cli::check::{render, OutputFormat};
use crate::store::{is_safe_component, MAX_GROUP_NAME_LEN};

/// Inputs per property unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 2_000;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    ProptestConfig {
        cases,
        // A failure is a bug to fix, not a regression file to keep next to the code.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const PATH: &str = "fuzz.toml";

/// Every property's assertion: parse the bytes as the server and `check` do.
fn holds_for(bytes: Vec<u8>) -> Result<(), TestCaseError> {
    let path = Path::new(PATH);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let lines = text.lines().count() as u32 + 1;
    match manifest_text(bytes, path).and_then(|text| parse_manifest(&text, path)) {
        Ok(loaded) => accepted_is_usable(&loaded),
        Err(errors) => {
            prop_assert!(!errors.0.is_empty(), "an error list with no error");
            for e in &errors.0 {
                prop_assert_eq!(&e.path, PATH);
                prop_assert!(!e.message.is_empty(), "{:?} in {:?}", e, text);
                let (Some(line), Some(column)) = (e.line, e.column) else {
                    return Err(TestCaseError::fail(format!("no position: {e:?}")));
                };
                prop_assert!(line >= 1 && column >= 1, "{:?}", e);
                prop_assert!(
                    line <= lines,
                    "line {} of a {}-line text: {:?}",
                    line,
                    lines,
                    e
                );
            }
            Ok(())
        }
    }
}

fn accepted_is_usable(loaded: &LoadedManifest) -> Result<(), TestCaseError> {
    for job in &loaded.manifest.jobs {
        prop_assert!(is_safe_component(&job.model), "model {:?}", job.model);
        prop_assert!(is_safe_component(&job.mode), "mode {:?}", job.mode);
        prop_assert!(job.model.len() + 1 + job.mode.len() <= MAX_GROUP_NAME_LEN);
    }
    for host in &loaded.manifest.hosts {
        prop_assert!(cis490_api::WorkerName::parse(&host.name).is_ok());
    }
    for format in [OutputFormat::Table, OutputFormat::Json] {
        let out = render(loaded, format).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(out.ends_with('\n'));
    }
    Ok(())
}

/// A valid manifest using most features, for mutations.
const SEED: &str = r#"version = 1

[defaults]
max_attempts = 3
stale_after_s = 90
command = ["python3", "train.py"]
retries_on_failure = 1
priority = 0

[[hosts]]
name = "gpu-box"
allow_jobs = ["gbt", "mlp"]
deny_jobs = ["*"]
max_concurrent = 2
labels = { room = "lab-1" }

[models.gbt]
command = ["python3", "gbt.py"]
hyper = { lr = "float", depth = "int", name = "string", flag = "bool" }

[[jobs]]
model = "gbt"
mode = "realistic"
hyper = { depth = 6, name = "a", flag = true }
split_recipe = "by-host"
train_hosts = ["a", "b"]
require_cuda = false
prefer_cuda = true
min_vram_gib = 8
min_ram_gib = 16.5
allowed_hosts = ["gpu-box"]
priority = 5
labels = { team = "x" }
matrix = { seed = [1, 2, 3], "hyper.lr" = [0.1, 0.01] }
"#;

/// Bytes that break TOML in interesting ways when dropped into a valid file.
const SHARP_BYTES: &[u8] = b"\"'[]{}=,.#\n\r\t\\ \x00\x7f\xff\xc3\xa9-+0123456789eE_:TZ";

fn mutated_seed() -> impl Strategy<Value = Vec<u8>> {
    let edit = (
        any::<prop::sample::Index>(),
        0..3u8,
        prop_oneof![prop::sample::select(SHARP_BYTES), any::<u8>()],
    );
    prop::collection::vec(edit, 1..8).prop_map(|edits| {
        let mut bytes = SEED.as_bytes().to_vec();
        for (at, op, byte) in edits {
            let at = at.index(bytes.len() + 1);
            match op {
                0 => bytes.insert(at, byte),
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ if at < bytes.len() => bytes[at] = byte,
                _ => bytes.push(byte),
            }
        }
        bytes
    })
}

/// A string: names the manifest knows and odd ones, anything, and now and then (about one
/// document in six) one far longer than any format width (65,535).
fn any_string() -> BoxedStrategy<String> {
    prop_oneof![
        60 => prop::sample::select(vec![
            "", "gbt", "mlp", "realistic", "*", "..", "a/b", ".hidden", "-rf", "x y", "é",
            "\u{0}", "\u{202e}", "C:\\x", "key=value", "int", "float", "string", "bool",
        ])
        .prop_map(str::to_string),
        40 => "[a-zA-Z0-9_.-]{1,12}",
        20 => any::<String>(),
        5 => (127usize..300).prop_map(|n| "n".repeat(n)),
        // Not a quote: toml_write 0.1 (the generator's serialiser, not the parser) counts
        // a run of quotes in a u8 and overflows past 255.
        1 => (any::<char>().prop_filter("a quote", |c| !matches!(c, '\'' | '"')), 65_536usize..70_000)
            .prop_map(|(c, n)| c.to_string().repeat(n)),
    ]
    .boxed()
}

fn scalar() -> BoxedStrategy<toml::Value> {
    prop_oneof![
        4 => any_string().prop_map(toml::Value::String),
        3 => prop_oneof![
            any::<i64>(),
            Just(0i64),
            Just(1),
            Just(-1),
            Just(i64::MAX),
            Just(i64::MIN),
            Just(i64::from(u32::MAX) + 1)
        ]
        .prop_map(toml::Value::Integer),
        2 => prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(-0.0),
            Just(1e308)
        ]
        .prop_map(toml::Value::Float),
        2 => any::<bool>().prop_map(toml::Value::Boolean),
        1 => prop::sample::select(vec![
            "1979-05-27T07:32:00Z",
            "1979-05-27",
            "07:32:00",
            "1979-05-27T00:32:00.999999-07:00"
        ])
        .prop_map(|d| d.parse().map(toml::Value::Datetime).unwrap_or(toml::Value::Boolean(false))),
    ]
    .boxed()
}

fn any_value() -> BoxedStrategy<toml::Value> {
    scalar()
        .prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
                prop::collection::btree_map(any_string(), inner, 0..4)
                    .prop_map(|m| toml::Value::Table(m.into_iter().collect())),
            ]
        })
        .boxed()
}

/// A model, mode or host name: ones the manifest takes and, when `wild`, ones it must refuse.
fn name_like(wild: bool) -> BoxedStrategy<String> {
    let fine = prop_oneof![
        8 => prop::sample::select(vec!["gbt", "mlp", "realistic", "oracle", "gpu-box", "cpu-box"])
            .prop_map(str::to_string),
        4 => "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,20}",
        // Around the store's limits: 128 characters each, 255 bytes for `<model>_<mode>`.
        2 => (120usize..=135).prop_map(|n| "m".repeat(n)),
    ];
    if !wild {
        return fine.boxed();
    }
    prop_oneof![
        4 => fine,
        1 => (120usize..140).prop_map(|n| "m".repeat(n)),
        1 => any_string(),
    ]
    .boxed()
}

fn string_list(item: BoxedStrategy<String>) -> BoxedStrategy<toml::Value> {
    prop::collection::vec(item.prop_map(toml::Value::String), 0..4)
        .prop_map(toml::Value::Array)
        .boxed()
}

fn integer(wild: bool) -> BoxedStrategy<toml::Value> {
    if !wild {
        return (1i64..50).prop_map(toml::Value::Integer).boxed();
    }
    prop_oneof![
        4 => -3i64..100,
        1 => any::<i64>(),
        1 => prop::sample::select(vec![i64::MIN, i64::MAX, i64::from(u32::MAX) + 1, i64::from(i32::MIN) - 1]),
    ]
    .prop_map(toml::Value::Integer)
    .boxed()
}

fn table(
    key: BoxedStrategy<String>,
    value: BoxedStrategy<toml::Value>,
    most: usize,
) -> BoxedStrategy<toml::Value> {
    prop::collection::btree_map(key, value, 0..most + 1)
        .prop_map(|m| toml::Value::Table(m.into_iter().collect()))
        .boxed()
}

/// A value of the type a manifest key wants, or (when `wild`, one time in five) anything.
fn field_value(key: &'static str, wild: bool) -> BoxedStrategy<toml::Value> {
    let typical = match key {
        "model" | "mode" | "name" => name_like(wild).prop_map(toml::Value::String).boxed(),
        "split_recipe" => any_string().prop_map(toml::Value::String).boxed(),
        "command" => prop::collection::vec(any_string().prop_map(toml::Value::String), 1..4)
            .prop_map(toml::Value::Array)
            .boxed(),
        "train_hosts" | "allowed_hosts" | "allow_jobs" | "deny_jobs" => string_list(name_like(wild)),
        "labels" => table(any_string(), any_string().prop_map(toml::Value::String).boxed(), 3),
        "hyper" => table(
            prop_oneof![3 => prop::sample::select(vec!["lr", "depth", "name", "flag"]).prop_map(str::to_string), 1 => any_string()].boxed(),
            prop_oneof![
                3 => scalar(),
                1 => prop::sample::select(vec!["int", "float", "string", "bool"]).prop_map(|t| toml::Value::String(t.to_string())),
                1 => prop::collection::vec(scalar(), 0..3).prop_map(toml::Value::Array),
            ]
            .boxed(),
            4,
        ),
        "require_cuda" | "prefer_cuda" => any::<bool>().prop_map(toml::Value::Boolean).boxed(),
        "min_vram_gib" | "min_ram_gib" if wild => prop_oneof![
            scalar(),
            (0.0f64..64.0).prop_map(toml::Value::Float),
        ]
        .boxed(),
        "min_vram_gib" | "min_ram_gib" => (0.0f64..64.0).prop_map(toml::Value::Float).boxed(),
        "matrix" => table(
            prop_oneof![
                4 => prop::sample::select(vec!["seed", "mode", "model", "hyper.lr", "hyper.depth", "priority", "labels"])
                    .prop_map(str::to_string),
                1 => any_string(),
            ]
            .boxed(),
            prop_oneof![
                4 => prop::collection::vec(scalar(), 0..4).prop_map(toml::Value::Array),
                1 => any_value(),
            ]
            .boxed(),
            3,
        ),
        _ => integer(wild),
    };
    if !wild {
        return typical;
    }
    prop_oneof![4 => typical, 1 => any_value()].boxed()
}

/// With probability `p` when `wild`, never otherwise.
fn sometimes<T: std::fmt::Debug + Clone + 'static>(
    wild: bool,
    p: f64,
    strategy: BoxedStrategy<T>,
) -> BoxedStrategy<Option<T>> {
    match wild {
        true => prop::option::weighted(p, strategy).boxed(),
        false => Just(None).boxed(),
    }
}

/// A table with some of `keys` (valued by [`field_value`]), the `required` ones present
/// (mostly, when `wild`), and when `wild` now and then a key the manifest does not know.
fn table_of(
    keys: &'static [&'static str],
    required: &'static [&'static str],
    wild: bool,
) -> BoxedStrategy<toml::Value> {
    let entry = prop::sample::select(keys)
        .prop_flat_map(move |k| (Just(k.to_string()), field_value(k, wild)));
    let stray = sometimes(wild, 0.1, (any_string(), any_value()).boxed());
    let musts: Vec<BoxedStrategy<Option<(String, toml::Value)>>> = required
        .iter()
        .map(|k| {
            let must = field_value(k, wild)
                .prop_map(move |v| (k.to_string(), v))
                .boxed();
            match wild {
                true => prop::option::weighted(0.9, must).boxed(),
                false => must.prop_map(Some).boxed(),
            }
        })
        .collect();
    (
        prop::collection::vec(entry, 0..keys.len().min(8) + 1),
        stray,
        musts,
    )
        .prop_map(|(entries, stray, musts)| {
            let mut table = toml::Table::new();
            for (k, v) in musts.into_iter().flatten().chain(entries).chain(stray) {
                table.insert(k, v);
            }
            toml::Value::Table(table)
        })
        .boxed()
}

/// A TOML document with a manifest's shape. Not `wild`: the keys and types a manifest
/// wants, so that many are accepted (and `check` renders their jobs); `wild`: any key,
/// type and name now and then, so that every check refuses something.
fn manifest_like(wild: bool) -> BoxedStrategy<Vec<u8>> {
    use super::build::{
        DEFAULTS_KEYS as DEFAULTS, HOST_KEYS as HOST, JOB_FIELDS, MODEL_KEYS as MODEL,
    };
    // A job entry takes its fields and a `matrix` over them.
    let job: &'static [&'static str] = Box::leak(
        JOB_FIELDS
            .iter()
            .copied()
            .chain(["matrix"])
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    let version = if wild {
        prop_oneof![8 => Just(Some(toml::Value::Integer(1))), 1 => scalar().prop_map(Some), 1 => Just(None)].boxed()
    } else {
        Just(Some(toml::Value::Integer(1))).boxed()
    };
    let models = table(name_like(wild), table_of(MODEL, &[], wild), 3);
    let top = (
        version,
        prop::option::weighted(0.9, table_of(DEFAULTS, &["command"], wild)),
        prop::option::of(prop::collection::vec(table_of(HOST, &["name"], wild), 0..3)),
        prop::option::of(models),
        prop::option::weighted(
            0.9,
            prop::collection::vec(table_of(job, &["model", "mode"], wild), 0..4),
        ),
        sometimes(wild, 0.1, (any_string(), any_value()).boxed()),
    );
    top.prop_filter_map(
        "not serialisable as TOML",
        |(version, defaults, hosts, models, jobs, extra)| {
            let mut doc = toml::Table::new();
            let mut put = |key: &str, value: Option<toml::Value>| {
                if let Some(value) = value {
                    doc.insert(key.to_string(), value);
                }
            };
            put("version", version);
            put("defaults", defaults);
            put("hosts", hosts.map(toml::Value::Array));
            put("models", models);
            put("jobs", jobs.map(toml::Value::Array));
            if let Some((key, value)) = extra {
                doc.insert(key, value);
            }
            toml::to_string(&doc).ok().map(String::into_bytes)
        },
    )
    .boxed()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        holds_for(bytes)?;
    }

    #[test]
    fn a_valid_manifest_with_bytes_changed(bytes in mutated_seed()) {
        holds_for(bytes)?;
    }

    #[test]
    fn arbitrary_toml_shaped_like_a_manifest(
        bytes in prop_oneof![manifest_like(false), manifest_like(true)]
    ) {
        holds_for(bytes)?;
    }
}

#[test]
fn the_seed_is_valid_so_mutations_start_from_a_manifest() {
    let loaded = parse_manifest(SEED, Path::new(PATH)).unwrap();
    assert_eq!(loaded.manifest.jobs.len(), 6);
}

#[test]
fn bytes_that_are_not_utf8_are_an_error_at_the_first_of_them() {
    let errors = manifest_text(b"version = 1\n# caf\xe9\n".to_vec(), Path::new(PATH)).unwrap_err();
    assert_eq!(errors.0.len(), 1);
    let e = &errors.0[0];
    assert_eq!((e.line, e.column), (Some(2), Some(6)), "{e:?}");
    assert!(
        e.message.contains("0xe9") && e.message.contains("UTF-8"),
        "{}",
        e.message
    );
}
