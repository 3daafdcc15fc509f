//! The catalog served over Flight SQL: `EXPLAIN` names the pushed filters there too, and
//! `fhir_refresh` exports only when DoGet runs it (GetFlightInfo only plans).

use std::sync::Arc;

use fhirflight::catalog::Freshness;

use super::{context, rows, scan_lines, seeded};
use crate::FlightFixture;

#[tokio::test]
async fn explain_over_flight_names_the_pushed_filters() {
    let cache = tempfile::tempdir().unwrap();
    let (ctx, _fhir) = context(seeded() as _, cache.path(), Freshness::Never).await;
    let mut flight = FlightFixture::over(ctx).await;
    let plan = flight
        .query("EXPLAIN SELECT id FROM src.fhir.condition WHERE code_coding_0_code = '44054006'")
        .await;
    assert!(
        scan_lines(&plan)
            .0
            .ends_with(", pushed=[_typeFilter=Condition?code=44054006]"),
        "{plan}"
    );
    flight.server.shutdown().await.unwrap();
}

/// Over Flight too, `EXPLAIN` of `fhir_refresh` exports nothing, and running it exports once:
/// GetFlightInfo only plans it, DoGet runs it.
#[tokio::test]
async fn fhir_refresh_over_flight_exports_only_when_run() {
    let cache = tempfile::tempdir().unwrap();
    let source = seeded();
    let (ctx, _fhir) = context(Arc::clone(&source) as _, cache.path(), Freshness::Never).await;
    assert_eq!(rows(&ctx, "SELECT id FROM src.fhir.patient").await.len(), 3);
    let mut flight = FlightFixture::over(ctx).await;
    let plan = flight
        .query("EXPLAIN SELECT * FROM fhir_refresh('src', 'Patient')")
        .await;
    assert!(
        plan.contains("FhirEffectExec: action=refresh, catalog=src, types=[Patient]"),
        "{plan}"
    );
    assert_eq!(source.fetches().len(), 1);
    let refreshed = flight
        .query("SELECT resource_type, changed FROM fhir_refresh('src', 'Patient')")
        .await;
    assert_eq!(refreshed, "Patient|0");
    assert_eq!(source.fetches().len(), 2);
    flight.server.shutdown().await.unwrap();
}
