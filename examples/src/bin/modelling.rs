//! Modelling: every `#[derive(Synced)]` attribute, every supported field type, and
//! the SQL the runtime generates for a model. The book's "Modelling" chapter walks
//! through it.
//!
//! ```text
//! cargo run --bin modelling                   # in a temporary directory
//! cargo run --bin modelling -- models.db      # or in a file you keep
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sync_runtime::{Error, Json, SyncDb, SyncId, SyncValue, Synced, params};

// ANCHOR: tag
/// A small model: a key, a text column and a nullable text column.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "tags")]
struct Tag {
    #[synced(primary_key)]
    id: SyncId,
    name: String,
    color: Option<String>,
}
// ANCHOR_END: tag

// ANCHOR: sample
/// One field of every supported type. None has a `default` attribute, so every
/// `NOT NULL` column takes its type's natural default.
#[derive(Synced, Debug, Clone, PartialEq, Default)]
#[synced(table = "samples")]
struct Sample {
    #[synced(primary_key)]
    id: SyncId,
    flag: bool,
    tiny: i8,
    small: i16,
    medium: i32,
    large: i64,
    byte: u8,
    word: u16,
    dword: u32,
    single: f32,
    double: f64,
    text: String,
    bytes: Vec<u8>,
    // With the `chrono` feature (or `time`'s types with `time`): integers.
    at: chrono::DateTime<chrono::Utc>,
    day: chrono::NaiveDate,
    // An `Option` of any supported type is a nullable column of the same type.
    parent: Option<SyncId>,
    maybe_flag: Option<bool>,
    maybe_count: Option<i64>,
    maybe_ratio: Option<f64>,
    maybe_text: Option<String>,
    maybe_bytes: Option<Vec<u8>>,
}
// ANCHOR_END: sample

// ANCHOR: profile
/// Explicit defaults of every literal kind, a renamed column and a field that is
/// not stored.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "profiles")]
struct Profile {
    #[synced(primary_key)]
    id: SyncId,
    // The column is `name`; the Rust field keeps its own name.
    #[synced(rename = "name")]
    display_name: String,
    #[synced(default = true)]
    notifications: bool,
    #[synced(default = 14)]
    font_size: u8,
    // -1: not pinned.
    #[synced(default = -1)]
    pinned_position: i32,
    #[synced(default = 1.25)]
    zoom: f64,
    #[synced(default = -6.5)]
    volume_db: f32,
    #[synced(default = "light")]
    theme: String,
    #[synced(default = b"\x33\x66\x99")]
    accent_rgb: Vec<u8>,
    // Nullable, but `'en'` when a write does not set it.
    #[synced(default = "en")]
    language: Option<String>,
    // Not a column: any type with a `Default`; reads fill it with `Default::default()`.
    #[synced(skip)]
    thumbnails: HashMap<u32, Vec<u8>>,
}
// ANCHOR_END: profile

// ANCHOR: team_member
/// A composite key: one row per (team, user). Without `table`, the table is named
/// after the struct in snake case: `team_member`.
#[derive(Synced, Debug, Clone, PartialEq)]
struct TeamMember {
    #[synced(primary_key)]
    team: SyncId,
    #[synced(primary_key)]
    user: SyncId,
    #[synced(default = "member")]
    role: String,
}
// ANCHOR_END: team_member

// ANCHOR: country
/// A single integer key, allowed by `integer_key`: ISO 3166 assigns the numeric
/// codes, so two devices never use one code for two different countries.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "countries")]
struct Country {
    #[synced(primary_key, integer_key)]
    code: u16,
    name: String,
}
// ANCHOR_END: country

// ANCHOR: app_types
/// An enum stored as its variant's name (`'Open'`, `'done'`); `#[default]` is
/// its natural default.
#[derive(SyncValue, Debug, Clone, Copy, PartialEq, Default)]
enum Status {
    #[default]
    Open,
    #[sync_value(rename = "done")]
    Done,
}

/// An enum stored as its discriminant, for columns the app's SQL compares.
#[derive(SyncValue, Debug, Clone, Copy, PartialEq, Default)]
#[sync_value(integer)]
enum Priority {
    Low = 1,
    #[default]
    Normal = 2,
    High = 3,
}

/// A newtype: stored as what it wraps.
#[derive(SyncValue, Debug, Clone, PartialEq, Default)]
struct Email(String);

#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "tasks")]
struct Task {
    #[synced(primary_key)]
    id: SyncId,
    status: Status,
    priority: Priority,
    assignee: Option<Email>,
    /// An id from another system, stored as its 16 bytes.
    external: Option<uuid::Uuid>,
    /// Any serde type, stored as JSON text.
    #[synced(default = "[]")]
    labels: Json<Vec<String>>,
    due: Option<chrono::NaiveDate>,
    created: chrono::DateTime<chrono::Utc>,
}
// ANCHOR_END: app_types

// ANCHOR: audit_entry
/// A grow-only table: rows can be inserted and updated, never deleted.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "audit_log", algorithm = "gos")]
struct AuditEntry {
    #[synced(primary_key)]
    id: SyncId,
    action: String,
    at_ms: i64,
}
// ANCHOR_END: audit_entry

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = std::env::args_os()
        .nth(1)
        .map_or_else(|| dir.path().join("modelling.db"), PathBuf::from);
    run(&path).await?;
    Ok(())
}

async fn run(path: &Path) -> Result<(), Error> {
    let db = SyncDb::open(path).await?;
    // ANCHOR: register
    db.register::<Tag>().await?;
    db.register::<Sample>().await?;
    db.register::<Profile>().await?;
    db.register::<TeamMember>().await?;
    db.register::<Country>().await?;
    db.register::<AuditEntry>().await?;
    db.register::<Task>().await?;
    // ANCHOR_END: register

    // ANCHOR: natural_defaults
    // A row written with its key only: every other column takes its default.
    // The natural defaults are the values of `Default::default()`.
    let id = SyncId::new();
    db.execute_raw("INSERT INTO samples (id) VALUES (?1)", params![id])
        .await?;
    let sample = db.get::<Sample>(&id).await?;
    let expected = Sample {
        id,
        ..Sample::default()
    };
    println!(
        "samples row from its key only equals Sample::default(): {}",
        sample == Some(expected)
    );
    // ANCHOR_END: natural_defaults

    // ANCHOR: explicit_defaults
    let id = SyncId::new();
    db.execute_raw("INSERT INTO profiles (id) VALUES (?1)", params![id])
        .await?;
    println!(
        "profile from its key only: {:?}",
        db.get::<Profile>(&id).await?
    );

    let ada = Profile {
        id: SyncId::new(),
        display_name: "Ada".into(),
        notifications: false,
        font_size: 16,
        pinned_position: 0,
        zoom: 1.0,
        volume_db: 0.0,
        theme: "dark".into(),
        accent_rgb: vec![0xcc, 0x33, 0x00],
        language: None,
        thumbnails: HashMap::from([(64, vec![0; 16])]),
    };
    db.insert(&ada).await?;
    let stored = db.get::<Profile>(&ada.id).await?;
    println!(
        "skipped field after a round trip: {:?}",
        stored.map(|p| p.thumbnails)
    );
    // ANCHOR_END: explicit_defaults

    // ANCHOR: composite_key
    let member = TeamMember {
        team: SyncId::new(),
        user: SyncId::new(),
        role: "owner".into(),
    };
    db.insert(&member).await?;
    // The key of a composite-key model is the tuple of its key fields.
    let key: (SyncId, SyncId) = member.key();
    let role = db.get::<TeamMember>(&key).await?.map(|m| m.role);
    println!("team_member {key:?}: {role:?}");
    // ANCHOR_END: composite_key

    // ANCHOR: integer_key
    db.insert(&Country {
        code: 250,
        name: "France".into(),
    })
    .await?;
    println!("country 250: {:?}", db.get::<Country>(&250).await?);
    // ANCHOR_END: integer_key

    // ANCHOR: grow_only
    let entry = AuditEntry {
        id: SyncId::new(),
        action: "signed in".into(),
        at_ms: 1_700_000_000_000,
    };
    db.insert(&entry).await?;
    match db.delete::<AuditEntry>(&entry.id).await {
        Err(refused @ Error::GrowOnly { .. }) => println!("delete refused: {refused}"),
        other => println!("delete: {other:?}"),
    }
    // ANCHOR_END: grow_only

    // ANCHOR: app_values
    let task = Task {
        id: SyncId::new(),
        status: Status::Done,
        priority: Priority::High,
        assignee: Some(Email("ann@example.com".into())),
        external: Some(uuid::Uuid::from_u128(7)),
        labels: Json::new(vec!["home".to_owned()]).expect("a list of strings is JSON"),
        due: chrono::NaiveDate::from_ymd_opt(2026, 12, 24),
        created: chrono::DateTime::from_timestamp(1_796_000_000, 0).unwrap_or_default(),
    };
    db.insert(&task).await?;
    // The app's SQL sees what is stored: names, numbers, JSON, integers.
    let stored: Vec<(String, i64, String, i64)> = db
        .read_with(
            "SELECT status, priority, labels, due FROM tasks WHERE id = ?1",
            params![task.id],
            |row| {
                Ok((
                    row.get_at(0)?,
                    row.get_at(1)?,
                    row.get_at(2)?,
                    row.get_at(3)?,
                ))
            },
        )
        .await?;
    println!("stored: {stored:?}");
    assert_eq!(
        stored,
        [("done".into(), 3, r#"["home"]"#.into(), 20_811)],
        "status, priority, labels, due (days since 1970-01-01)"
    );
    assert_eq!(db.get::<Task>(&task.id).await?, Some(task));
    // ANCHOR_END: app_values

    // ANCHOR: print_sql
    // The table, clock table, indexes and triggers that `register` created.
    println!("\n{}", Tag::SCHEMA.sql());
    // ANCHOR_END: print_sql
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use sync_runtime::{Algorithm, SqlType, SyncDb, Synced, TableSchema, params};

    use super::{AuditEntry, Country, Profile, Sample, Tag, TeamMember, run};

    /// (name, type, nullable, primary key, default) of every column.
    fn columns(schema: &TableSchema) -> Vec<(&str, SqlType, bool, bool, Option<&str>)> {
        schema
            .columns
            .iter()
            .map(|c| {
                (
                    &*c.name,
                    c.sql_type,
                    c.nullable,
                    c.primary_key,
                    c.default.as_deref(),
                )
            })
            .collect()
    }

    #[test]
    fn every_type_maps_to_its_column_with_its_natural_default() {
        use SqlType::{Blob, Integer, Real, Text};
        assert_eq!(Sample::SCHEMA.name, "samples");
        assert_eq!(Sample::SCHEMA.algorithm, Algorithm::Cls);
        assert_eq!(
            columns(Sample::SCHEMA),
            [
                ("id", Text, false, true, None),
                ("flag", Integer, false, false, Some("0")),
                ("tiny", Integer, false, false, Some("0")),
                ("small", Integer, false, false, Some("0")),
                ("medium", Integer, false, false, Some("0")),
                ("large", Integer, false, false, Some("0")),
                ("byte", Integer, false, false, Some("0")),
                ("word", Integer, false, false, Some("0")),
                ("dword", Integer, false, false, Some("0")),
                ("single", Real, false, false, Some("0.0")),
                ("double", Real, false, false, Some("0.0")),
                ("text", Text, false, false, Some("''")),
                ("bytes", Blob, false, false, Some("x''")),
                ("at", Integer, false, false, Some("0")),
                ("day", Integer, false, false, Some("0")),
                ("parent", Text, true, false, None),
                ("maybe_flag", Integer, true, false, None),
                ("maybe_count", Integer, true, false, None),
                ("maybe_ratio", Real, true, false, None),
                ("maybe_text", Text, true, false, None),
                ("maybe_bytes", Blob, true, false, None),
            ]
        );
    }

    #[test]
    fn the_apps_own_types_map_to_their_storage() {
        use SqlType::{Blob, Integer, Text};
        assert_eq!(
            columns(super::Task::SCHEMA),
            [
                ("id", Text, false, true, None),
                ("status", Text, false, false, Some("'Open'")),
                ("priority", Integer, false, false, Some("2")),
                ("assignee", Text, true, false, None),
                ("external", Blob, true, false, None),
                ("labels", Text, false, false, Some("'[]'")),
                ("due", Integer, true, false, None),
                ("created", Integer, false, false, Some("0")),
            ]
        );
    }

    #[test]
    fn attributes_shape_the_descriptors() {
        use SqlType::{Blob, Integer, Real, Text};
        assert_eq!(
            columns(Profile::SCHEMA),
            [
                ("id", Text, false, true, None),
                ("name", Text, false, false, Some("''")),
                ("notifications", Integer, false, false, Some("1")),
                ("font_size", Integer, false, false, Some("14")),
                ("pinned_position", Integer, false, false, Some("-1")),
                ("zoom", Real, false, false, Some("1.25")),
                ("volume_db", Real, false, false, Some("-6.5")),
                ("theme", Text, false, false, Some("'light'")),
                ("accent_rgb", Blob, false, false, Some("x'336699'")),
                ("language", Text, true, false, Some("'en'")),
            ]
        );

        assert_eq!(TeamMember::SCHEMA.name, "team_member");
        let keys: Vec<&str> = TeamMember::SCHEMA.key_columns().map(|c| &*c.name).collect();
        assert_eq!(keys, ["team", "user"]);

        assert_eq!(
            columns(Country::SCHEMA),
            [
                ("code", Integer, false, true, None),
                ("name", Text, false, false, Some("''")),
            ]
        );

        assert_eq!(AuditEntry::SCHEMA.name, "audit_log");
        assert_eq!(AuditEntry::SCHEMA.algorithm, Algorithm::Gos);

        for schema in [
            Tag::SCHEMA,
            Sample::SCHEMA,
            Profile::SCHEMA,
            TeamMember::SCHEMA,
            Country::SCHEMA,
            AuditEntry::SCHEMA,
        ] {
            assert_eq!(schema.validate(), Ok(()), "{}", schema.name);
        }
    }

    #[tokio::test]
    async fn defaults_fill_missing_columns_and_grow_only_rows_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("modelling.db");
        run(&path).await.unwrap();

        let db = SyncDb::open(&path).await.unwrap();
        db.register::<Sample>().await.unwrap();
        db.register::<Profile>().await.unwrap();
        db.register::<TeamMember>().await.unwrap();
        db.register::<Country>().await.unwrap();
        db.register::<AuditEntry>().await.unwrap();

        let samples: Vec<Sample> = db.query("", params![]).await.unwrap();
        assert_eq!(samples.len(), 1);
        assert_eq!(
            samples[0],
            Sample {
                id: samples[0].id,
                ..Sample::default()
            }
        );

        let defaults: Vec<Profile> = db.query("name = ''", params![]).await.unwrap();
        assert_eq!(defaults.len(), 1);
        assert_eq!(
            defaults[0],
            Profile {
                id: defaults[0].id,
                display_name: String::new(),
                notifications: true,
                font_size: 14,
                pinned_position: -1,
                zoom: 1.25,
                volume_db: -6.5,
                theme: "light".into(),
                accent_rgb: vec![0x33, 0x66, 0x99],
                language: Some("en".into()),
                thumbnails: HashMap::new(),
            }
        );
        // A typed write stores every column, so `None` stays NULL.
        let ada: Vec<Profile> = db.query("name = 'Ada'", params![]).await.unwrap();
        assert_eq!(ada[0].language, None);
        assert!(ada[0].thumbnails.is_empty());

        let members: Vec<TeamMember> = db.query("", params![]).await.unwrap();
        let key = members[0].key();
        assert_eq!(
            db.get::<TeamMember>(&key).await.unwrap().unwrap().role,
            "owner"
        );
        assert_eq!(
            db.get::<Country>(&250).await.unwrap().unwrap().name,
            "France"
        );

        let entries: Vec<AuditEntry> = db.query("", params![]).await.unwrap();
        assert_eq!(entries.len(), 1, "the refused delete removed nothing");
    }

    /// The internals chapter includes `book/src/tags.sql`, the SQL printed for
    /// `Tag`. Run with `SYNCED_BOOK=overwrite` to rewrite the file after a change
    /// to the generated SQL.
    #[test]
    fn the_book_shows_the_sql_generated_for_tags() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../book/src/tags.sql");
        let sql = Tag::SCHEMA.sql();
        if std::env::var_os("SYNCED_BOOK").is_some_and(|v| v == "overwrite") {
            std::fs::write(&file, &sql).unwrap();
        }
        let book = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(
            book == sql,
            "{} is out of date; rerun this test with SYNCED_BOOK=overwrite and review the diff",
            file.display()
        );
    }
}
