//! `GET /v1/jobs?label=`: a kubectl-style selector applied per row, every term ANDed.

use cis490_api::JobFilter;

use super::test_support::specs;
use super::test_support::Backend;
use super::tests::load;

fn several_terms_and_not_equals_select_on_the_server_and_a_bad_term_is_named(b: Backend) {
    let q = b.queue();
    let q = &*q;
    let mut jobs = specs("j", 4);
    let put = |labels: &mut std::collections::BTreeMap<String, String>, k: &str, v: &str| {
        labels.insert(k.to_string(), v.to_string());
    };
    put(&mut jobs[0].labels, "team", "a");
    put(&mut jobs[0].labels, "gpu", "none");
    put(&mut jobs[1].labels, "team", "a");
    put(&mut jobs[1].labels, "gpu", "small");
    put(&mut jobs[2].labels, "team", "a");
    put(&mut jobs[3].labels, "team", "b");
    load(q, &jobs);
    let ids = |label: &str| -> Vec<String> {
        q.jobs(&JobFilter {
            label: Some(label.to_string()),
            ..JobFilter::default()
        })
        .unwrap()
        .into_iter()
        .map(|j| j.id.to_string())
        .collect()
    };
    let id = |i: usize| jobs[i].id.to_string();
    assert_eq!(ids("team=a"), [id(0), id(1), id(2)]);
    // An absent label is not equal to `none`, as in Kubernetes.
    assert_eq!(ids("team=a,gpu!=none"), [id(1), id(2)]);
    assert_eq!(ids("team=a,gpu"), [id(0), id(1)]);
    assert_eq!(ids("!gpu"), [id(2), id(3)]);

    let err = q
        .jobs(&JobFilter {
            label: Some("team=a,gpu=".to_string()),
            ..JobFilter::default()
        })
        .unwrap_err();
    assert_eq!(err.code(), "bad_request");
    assert!(err.to_string().contains("\"gpu=\""), "{err}");
}

super::test_support::on_both_backends!(
    several_terms_and_not_equals_select_on_the_server_and_a_bad_term_is_named,
);
