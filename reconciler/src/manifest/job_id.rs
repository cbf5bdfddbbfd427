//! Job identity: sha256 of the canonical JSON of the six identity fields.

use cis490_api::{Hyper, JobId};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A job's ID: the sha256 (hex) of the canonical JSON of
/// `{hyper, mode, model, seed, split_recipe, train_hosts}`: object keys sorted at every
/// level, no whitespace, numbers as parsed (integers stay integers, floats as serde_json
/// prints them), `split_recipe` null when absent.
///
/// `train_hosts` is a set (the hosts whose data the job trains on), so it is sorted and
/// deduplicated first: `["b", "a", "a"]` and `["a", "b"]` name the same job.
pub fn job_id(
    model: &str,
    mode: &str,
    hyper: &Hyper,
    split_recipe: Option<&str>,
    train_hosts: &[String],
    seed: i64,
) -> JobId {
    let mut hosts: Vec<&String> = train_hosts.iter().collect();
    hosts.sort();
    hosts.dedup();
    let identity = serde_json::json!({
        "hyper": hyper,
        "mode": mode,
        "model": model,
        "seed": seed,
        "split_recipe": split_recipe,
        "train_hosts": hosts,
    });
    let canonical = canonical_json(&identity);
    let hex = hex::encode(Sha256::digest(canonical.as_bytes()));
    match JobId::parse(&hex) {
        Ok(id) => id,
        // 64 lowercase hex digits are a valid job ID by construction.
        Err(err) => unreachable!("sha256 hex is not a job ID: {err}"),
    }
}

/// Canonical JSON text: object keys sorted at every level, no whitespace. Written by hand
/// rather than trusting `serde_json::Map`'s order, which a `preserve_order` feature enabled
/// anywhere in the build would silently change.
pub(crate) fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                if let Some(item) = map.get(key) {
                    write_canonical(item, out);
                }
            }
            out.push('}');
        }
        // Scalars: serde_json's own compact form (strings escaped, numbers as parsed).
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn hyper(pairs: &[(&str, Value)]) -> Hyper {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level_and_keeps_number_forms() {
        let v = json!({"b": 1, "a": {"z": 1.0, "y": [2, 0.5]}, "c": null});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"y":[2,0.5],"z":1.0},"b":1,"c":null}"#
        );
    }

    #[test]
    fn id_is_sha256_of_the_documented_canonical_form() {
        let h = hyper(&[("lr", json!(0.1)), ("depth", json!(6))]);
        let id = job_id("gbt", "oracle", &h, None, &["b".into(), "a".into()], 7);
        let expected = r#"{"hyper":{"depth":6,"lr":0.1},"mode":"oracle","model":"gbt","seed":7,"split_recipe":null,"train_hosts":["a","b"]}"#;
        assert_eq!(
            id.as_str(),
            hex::encode(Sha256::digest(expected.as_bytes()))
        );
    }

    #[test]
    fn train_hosts_are_a_set() {
        let h = Hyper::new();
        let a = job_id("m", "x", &h, None, &["b".into(), "a".into(), "a".into()], 1);
        let b = job_id("m", "x", &h, None, &["a".into(), "b".into()], 1);
        assert_eq!(a, b);
    }

    #[test]
    fn every_identity_field_changes_the_id() {
        let h = hyper(&[("lr", json!(0.1))]);
        let base = job_id("m", "x", &h, Some("r"), &["a".into()], 1);
        let others = [
            job_id("n", "x", &h, Some("r"), &["a".into()], 1),
            job_id("m", "y", &h, Some("r"), &["a".into()], 1),
            job_id(
                "m",
                "x",
                &hyper(&[("lr", json!(0.2))]),
                Some("r"),
                &["a".into()],
                1,
            ),
            job_id("m", "x", &h, None, &["a".into()], 1),
            job_id("m", "x", &h, Some("r"), &[], 1),
            job_id("m", "x", &h, Some("r"), &["a".into()], 2),
            // An integer and a float of the same value are different hyperparameters.
            job_id(
                "m",
                "x",
                &hyper(&[("lr", json!(1))]),
                Some("r"),
                &["a".into()],
                1,
            ),
        ];
        for other in &others {
            assert_ne!(&base, other);
        }
        assert_ne!(
            others[6],
            job_id(
                "m",
                "x",
                &hyper(&[("lr", json!(1.0))]),
                Some("r"),
                &["a".into()],
                1
            )
        );
    }

    proptest! {
        /// The ID depends on hyper's contents, never on the order keys were inserted in,
        /// even for nested objects built in different orders.
        #[test]
        fn id_is_independent_of_hyper_insertion_order(
            pairs in proptest::collection::btree_map("[a-z]{1,6}", -1000i64..1000, 0..8),
            seed in any::<i64>(),
            rotate in 0usize..8,
        ) {
            let entries: Vec<(String, i64)> = pairs.into_iter().collect();
            let mut rotated = entries.clone();
            if !rotated.is_empty() {
                let n = rotate % rotated.len();
                rotated.rotate_left(n);
            }
            let mut reversed = entries.clone();
            reversed.reverse();

            let build = |order: &[(String, i64)]| {
                let mut h = Hyper::new();
                let mut nested = serde_json::Map::new();
                for (k, v) in order {
                    h.insert(k.clone(), json!(v));
                    nested.insert(k.clone(), json!(v));
                }
                h.insert("nested".into(), Value::Object(nested));
                h
            };
            let a = job_id("gbt", "oracle", &build(&entries), None, &[], seed);
            let b = job_id("gbt", "oracle", &build(&rotated), None, &[], seed);
            let c = job_id("gbt", "oracle", &build(&reversed), None, &[], seed);
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(&a, &c);
        }
    }
}
