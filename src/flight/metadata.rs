//! Metadata answers: GetSqlInfo values, XDBC type info, and the (empty) key listings.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::{
    Nullable, Searchable, SqlInfo, SqlSupportedCaseSensitivity, SqlSupportedTransaction,
    SqlSupportsConvert, XdbcDataType,
};
use datafusion::logical_expr::scalar_doc_sections as sections;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::keywords::ALL_KEYWORDS;

/// The values of every SqlInfo key the Flight SQL spec defines (clients such as the JDBC driver
/// ask for all of them when they connect); functions come from the session's own registry.
pub(crate) fn sql_info(ctx: &SessionContext) -> SqlInfoData {
    use SqlInfo::*;
    let mut b = SqlInfoDataBuilder::new();
    b.append(FlightSqlServerName, "fhirflight");
    b.append(FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(FlightSqlServerArrowVersion, "1.5");
    b.append(FlightSqlServerReadOnly, true);
    b.append(FlightSqlServerSql, true);
    b.append(FlightSqlServerSubstrait, false);
    b.append(
        FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    b.append(FlightSqlServerCancel, false);
    b.append(FlightSqlServerBulkIngestion, false);
    b.append(FlightSqlServerIngestTransactionsSupported, false);
    // Handles are self-contained, so they never time out.
    b.append(FlightSqlServerStatementTimeout, 0i32);
    b.append(FlightSqlServerTransactionTimeout, 0i32);

    for key in [SqlDdlCatalog, SqlDdlSchema, SqlDdlTable] {
        b.append(key, false);
    }
    // Statements go through `catalog::sql`: unquoted identifiers match case-insensitively (and
    // keep their case); quoted ones keep their case too (and match exactly, which the protocol
    // has no value for).
    b.append(
        SqlIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityCaseInsensitive as i32,
    );
    b.append(SqlIdentifierQuoteChar, "\"");
    b.append(
        SqlQuotedIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityCaseInsensitive as i32,
    );
    b.append(
        SqlNullOrdering,
        arrow_flight::sql::SqlNullOrdering::SqlNullsSortedHigh as i32,
    );
    let keywords: Vec<String> = ALL_KEYWORDS.iter().map(|k| k.to_string()).collect();
    b.append(SqlKeywords, keywords);
    let functions = functions(ctx);
    for (key, group) in [
        (SqlNumericFunctions, FunctionGroup::Numeric),
        (SqlStringFunctions, FunctionGroup::String),
        (SqlSystemFunctions, FunctionGroup::System),
        (SqlDatetimeFunctions, FunctionGroup::Datetime),
    ] {
        let names: Vec<String> = functions
            .get(&group)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        b.append(key, names);
    }
    b.append(SqlSearchStringEscape, "\\");
    b.append(SqlExtraNameCharacters, "");
    for key in [
        SqlAllTablesAreSelectable,
        SqlSupportsColumnAliasing,
        SqlNullPlusNullIsNull,
        SqlSupportsTableCorrelationNames,
        SqlSupportsExpressionsInOrderBy,
        SqlSupportsOrderByUnrelated,
        SqlSupportsLikeEscapeClause,
        SqlSupportsNonNullableColumns,
        SqlCatalogAtStart,
        SqlCorrelatedSubqueriesSupported,
    ] {
        b.append(key, true);
    }
    for key in [
        SqlSupportsDifferentTableCorrelationNames,
        SqlSupportsIntegrityEnhancementFacility,
        SqlSelectForUpdateSupported,
        SqlStoredProceduresSupported,
        SqlMaxRowSizeIncludesBlobs,
        SqlTransactionsSupported,
        SqlDataDefinitionCausesTransactionCommit,
        SqlDataDefinitionsInTransactionsIgnored,
        SqlBatchUpdatesSupported,
        SqlSavepointsSupported,
        SqlNamedParametersSupported,
        SqlLocatorsUpdateCopy,
        SqlStoredFunctionsUsingCallSyntaxSupported,
    ] {
        b.append(key, false);
    }
    b.append(SqlSupportsConvert, supported_conversions());
    // Bitmasks: bit n set = the enum value n is supported.
    b.append(SqlSupportedGroupBy, 0b11i32); // unrelated, beyond select
    b.append(SqlSupportedGrammar, 0b11i32); // minimum, core
    b.append(SqlAnsi92SupportedLevel, 0b1i32); // entry
    b.append(
        SqlOuterJoinsSupportLevel,
        arrow_flight::sql::SqlOuterJoinsSupportLevel::SqlFullOuterJoins as i32,
    );
    b.append(SqlSchemaTerm, "schema");
    b.append(SqlProcedureTerm, "procedure");
    b.append(SqlCatalogTerm, "catalog");
    b.append(SqlSchemasSupportedActions, 0i32);
    b.append(SqlCatalogsSupportedActions, 0i32);
    b.append(SqlSupportedPositionedCommands, 0i32);
    b.append(SqlSupportedSubqueries, 0b111i32); // comparisons, EXISTS, IN
    b.append(SqlSupportedUnions, 0b11i32); // UNION, UNION ALL
    // 0: no known limit.
    for key in [
        SqlMaxBinaryLiteralLength,
        SqlMaxCharLiteralLength,
        SqlMaxColumnNameLength,
        SqlMaxColumnsInGroupBy,
        SqlMaxColumnsInIndex,
        SqlMaxColumnsInOrderBy,
        SqlMaxColumnsInSelect,
        SqlMaxColumnsInTable,
        SqlMaxConnections,
        SqlMaxCursorNameLength,
        SqlMaxIndexLength,
        SqlDbSchemaNameLength,
        SqlMaxProcedureNameLength,
        SqlMaxCatalogNameLength,
        SqlMaxRowSize,
        SqlMaxStatementLength,
        SqlMaxStatements,
        SqlMaxTableNameLength,
        SqlMaxTablesInSelect,
        SqlMaxUsernameLength,
    ] {
        b.append(key, 0i64);
    }
    b.append(SqlDefaultTransactionIsolation, 0i32); // none
    b.append(SqlSupportedTransactionsIsolationLevels, 0i32);
    b.append(SqlSupportedResultSetTypes, 0b10i32); // forward only
    b.append(SqlSupportedConcurrenciesForResultSetUnspecified, 0i32);
    b.append(SqlSupportedConcurrenciesForResultSetForwardOnly, 0b10i32); // read only
    b.append(SqlSupportedConcurrenciesForResultSetScrollSensitive, 0i32);
    b.append(SqlSupportedConcurrenciesForResultSetScrollInsensitive, 0i32);
    b.build().expect("static SqlInfo values have valid types")
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum FunctionGroup {
    Numeric,
    String,
    Datetime,
    System,
}

/// The session's scalar functions by JDBC group, upper case and sorted.
fn functions(ctx: &SessionContext) -> BTreeMap<FunctionGroup, BTreeSet<String>> {
    let mut groups: BTreeMap<FunctionGroup, BTreeSet<String>> = BTreeMap::new();
    for (name, udf) in ctx.state().scalar_functions() {
        let section = udf.documentation().map(|d| d.doc_section.label);
        let group = match section {
            Some(l) if l == sections::DOC_SECTION_MATH.label => FunctionGroup::Numeric,
            Some(l)
                if [
                    sections::DOC_SECTION_STRING,
                    sections::DOC_SECTION_BINARY_STRING,
                    sections::DOC_SECTION_REGEX,
                ]
                .iter()
                .any(|s| s.label == l) =>
            {
                FunctionGroup::String
            }
            Some(l) if l == sections::DOC_SECTION_DATETIME.label => FunctionGroup::Datetime,
            _ => FunctionGroup::System,
        };
        groups.entry(group).or_default().insert(name.to_uppercase());
    }
    groups
}

/// Which SQL types CAST converts between.
fn supported_conversions() -> BTreeMap<i32, Vec<i32>> {
    use SqlSupportsConvert::*;
    let numeric = [
        SqlConvertBigint,
        SqlConvertBit,
        SqlConvertDecimal,
        SqlConvertFloat,
        SqlConvertInteger,
        SqlConvertNumeric,
        SqlConvertReal,
        SqlConvertSmallint,
        SqlConvertTinyint,
    ];
    let text = [SqlConvertChar, SqlConvertVarchar, SqlConvertLongvarchar];
    let binary = [
        SqlConvertBinary,
        SqlConvertVarbinary,
        SqlConvertLongvarbinary,
    ];
    let temporal = [SqlConvertDate, SqlConvertTime, SqlConvertTimestamp];
    let ids = |types: &[&[SqlSupportsConvert]]| -> Vec<i32> {
        types
            .iter()
            .flat_map(|t| t.iter().map(|c| *c as i32))
            .collect()
    };
    let mut map = BTreeMap::new();
    for from in numeric {
        map.insert(from as i32, ids(&[&numeric, &text]));
    }
    for from in text {
        map.insert(from as i32, ids(&[&numeric, &text, &binary, &temporal]));
    }
    for from in binary {
        map.insert(from as i32, ids(&[&text, &binary]));
    }
    for from in temporal {
        map.insert(from as i32, ids(&[&text, &temporal]));
    }
    map
}

/// The SQL types DataFusion offers, for GetXdbcTypeInfo.
pub(crate) fn xdbc_type_info() -> XdbcTypeInfoData {
    use XdbcDataType::*;
    let mut b = XdbcTypeInfoDataBuilder::new();
    // name, type, column size, literal quote, numeric radix
    type Row = (
        &'static str,
        XdbcDataType,
        Option<i32>,
        Option<&'static str>,
        Option<i32>,
    );
    let types: [Row; 13] = [
        ("BOOLEAN", XdbcBit, Some(1), None, None),
        ("TINYINT", XdbcTinyint, Some(3), None, Some(10)),
        ("SMALLINT", XdbcSmallint, Some(5), None, Some(10)),
        ("INTEGER", XdbcInteger, Some(10), None, Some(10)),
        ("BIGINT", XdbcBigint, Some(19), None, Some(10)),
        ("REAL", XdbcReal, Some(7), None, Some(2)),
        ("DOUBLE", XdbcDouble, Some(15), None, Some(2)),
        ("DECIMAL", XdbcDecimal, Some(38), None, Some(10)),
        ("VARCHAR", XdbcVarchar, Some(i32::MAX), Some("'"), None),
        ("BYTEA", XdbcVarbinary, Some(i32::MAX), Some("X'"), None),
        ("DATE", XdbcDate, Some(10), Some("DATE '"), None),
        ("TIME", XdbcTime, Some(15), Some("TIME '"), None),
        (
            "TIMESTAMP",
            XdbcTimestamp,
            Some(26),
            Some("TIMESTAMP '"),
            None,
        ),
    ];
    for (name, data_type, column_size, prefix, radix) in types {
        let is_text = data_type == XdbcVarchar;
        b.append(XdbcTypeInfo {
            type_name: name.into(),
            data_type,
            column_size,
            literal_prefix: prefix.map(Into::into),
            literal_suffix: prefix.map(|_| "'".into()),
            create_params: (data_type == XdbcDecimal)
                .then(|| vec!["precision".into(), "scale".into()]),
            nullable: Nullable::NullabilityNullable,
            case_sensitive: is_text,
            searchable: if is_text {
                Searchable::Full
            } else {
                Searchable::Basic
            },
            unsigned_attribute: radix.map(|_| false),
            fixed_prec_scale: false,
            auto_increment: radix.map(|_| false),
            local_type_name: Some(name.into()),
            minimum_scale: None,
            maximum_scale: (data_type == XdbcDecimal).then_some(38),
            sql_data_type: data_type,
            datetime_subcode: None,
            num_prec_radix: radix,
            interval_precision: None,
        });
    }
    b.build().expect("static XDBC type info is valid")
}

/// The result schema of GetPrimaryKeys (the spec's column names and types).
pub(crate) fn primary_keys_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new("catalog_name", DataType::Utf8, true),
            Field::new("db_schema_name", DataType::Utf8, true),
            Field::new("table_name", DataType::Utf8, false),
            Field::new("column_name", DataType::Utf8, false),
            Field::new("key_name", DataType::Utf8, true),
            Field::new("key_sequence", DataType::Int32, false),
        ]))
    });
    Arc::clone(&SCHEMA)
}

/// The result schema of GetExportedKeys, GetImportedKeys and GetCrossReference.
pub(crate) fn foreign_keys_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new("pk_catalog_name", DataType::Utf8, true),
            Field::new("pk_db_schema_name", DataType::Utf8, true),
            Field::new("pk_table_name", DataType::Utf8, false),
            Field::new("pk_column_name", DataType::Utf8, false),
            Field::new("fk_catalog_name", DataType::Utf8, true),
            Field::new("fk_db_schema_name", DataType::Utf8, true),
            Field::new("fk_table_name", DataType::Utf8, false),
            Field::new("fk_column_name", DataType::Utf8, false),
            Field::new("key_sequence", DataType::Int32, false),
            Field::new("fk_key_name", DataType::Utf8, true),
            Field::new("pk_key_name", DataType::Utf8, true),
            Field::new("update_rule", DataType::UInt8, false),
            Field::new("delete_rule", DataType::UInt8, false),
        ]))
    });
    Arc::clone(&SCHEMA)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_info_has_every_key_and_real_functions() {
        let ctx = SessionContext::new();
        let info = sql_info(&ctx);
        let batch = info.record_batch([]).unwrap();
        // Every SqlInfo the spec defines except the Substrait version strings.
        assert_eq!(batch.num_rows(), 89, "{:?}", batch.column(0));
        let groups = functions(&ctx);
        assert!(groups[&FunctionGroup::Numeric].contains("ABS"));
        assert!(groups[&FunctionGroup::String].contains("UPPER"));
        assert!(groups[&FunctionGroup::Datetime].contains("DATE_TRUNC"));
    }
}
