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
    // The canonical text written straight into one buffer, without building a
    // `serde_json::Value` of the identity first (a 100k-job manifest computes 100k IDs on
    // every reload). The top-level keys are written in their sorted order; hyper is a
    // BTreeMap, so its keys come sorted too.
    let mut out: Vec<u8> = Vec::with_capacity(160);
    out.extend_from_slice(b"{\"hyper\":{");
    for (i, (key, value)) in hyper.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_compact(&key.as_str(), &mut out);
        out.push(b':');
        write_canonical(value, &mut out);
    }
    out.extend_from_slice(b"},\"mode\":");
    write_compact(&mode, &mut out);
    out.extend_from_slice(b",\"model\":");
    write_compact(&model, &mut out);
    out.extend_from_slice(b",\"seed\":");
    write_compact(&seed, &mut out);
    out.extend_from_slice(b",\"split_recipe\":");
    write_compact(&split_recipe, &mut out);
    out.extend_from_slice(b",\"train_hosts\":");
    write_compact(&hosts, &mut out);
    out.push(b'}');
    let hex = hex::encode(Sha256::digest(&out));
    match JobId::parse(&hex) {
        Ok(id) => id,
        // 64 lowercase hex digits are a valid job ID by construction.
        Err(err) => unreachable!("sha256 hex is not a job ID: {err}"),
    }
}

/// Canonical JSON text: object keys sorted at every level, no whitespace. Written by hand
/// rather than trusting `serde_json::Map`'s order, which a `preserve_order` feature enabled
/// anywhere in the build would silently change.
#[cfg(test)]
pub(crate) fn canonical_json(value: &Value) -> String {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_compact(&key.as_str(), out);
                out.push(b':');
                if let Some(item) = map.get(key) {
                    write_canonical(item, out);
                }
            }
            out.push(b'}');
        }
        // Scalars: serde_json's own compact form (strings escaped, numbers as parsed).
        scalar => write_compact(scalar, out),
    }
}

/// serde_json's compact form of a string, number, null or list of strings: what
/// `Value::to_string` prints for it.
fn write_compact<T: serde::Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    if let Err(err) = serde_json::to_writer(&mut *out, value) {
        // Writing strings, numbers and lists of them into a Vec cannot fail.
        unreachable!("cannot write JSON into memory: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// The ID as first written: the identity built as a `serde_json::Value`, then written
    /// canonically. `job_id` must give the same ID for every input (IDs are stored).
    fn job_id_via_value(
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
        JobId::parse(&hex::encode(Sha256::digest(canonical.as_bytes()))).unwrap()
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let scalar = prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
            "\\PC{0,8}|[\"\\\\\n\t\u{1}a-z]{0,6}".prop_map(Value::from),
        ];
        scalar.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z\"]{1,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn id_is_the_one_the_value_based_canonical_form_gives(
            model in "\\PC{0,8}",
            mode in "[a-z\"\\\\]{0,6}",
            hyper in proptest::collection::btree_map("\\PC{1,6}", arb_json(), 0..5),
            split_recipe in proptest::option::of("\\PC{0,6}"),
            train_hosts in proptest::collection::vec("[a-c]{1,2}", 0..4),
            seed in any::<i64>(),
        ) {
            prop_assert_eq!(
                job_id(&model, &mode, &hyper, split_recipe.as_deref(), &train_hosts, seed),
                job_id_via_value(&model, &mode, &hyper, split_recipe.as_deref(), &train_hosts, seed)
            );
        }
    }

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
