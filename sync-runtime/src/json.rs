//! A column holding any serde type as JSON text.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::value::{SqlType, SyncValue, ValueError, ValueRef};

/// A field stored as JSON text: any `Serialize + DeserializeOwned` type (a
/// list of tags, a settings struct) in one `TEXT` column. The column merges
/// as one value: concurrent edits of two parts of it keep one of the two
/// (split what devices edit apart into columns of their own).
///
/// It keeps the text it was made from or read as, so that writing it borrows
/// that text. A `NOT NULL` JSON column has no natural default: make the field
/// an `Option<Json<T>>`, or give it `#[synced(default = "[]")]` (the JSON
/// text every row that never wrote it reads).
///
/// ```
/// use sync_runtime::{Json, SyncDb, SyncId, Synced};
///
/// #[derive(Synced, Debug, Clone, PartialEq)]
/// #[synced(table = "notes")]
/// struct Note {
///     #[synced(primary_key)]
///     id: SyncId,
///     #[synced(default = "[]")]
///     tags: Json<Vec<String>>,
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> sync_runtime::Result<()> {
/// let db = SyncDb::open_in_memory().await?;
/// db.register::<Note>().await?;
/// let note = Note { id: SyncId::new(), tags: Json::new(vec!["home".to_owned()]).unwrap() };
/// db.insert(&note).await?;
/// let read = db.get::<Note>(&note.id).await?.unwrap();
/// assert_eq!(*read.tags, ["home"]);
/// assert_eq!(read.tags.text(), r#"["home"]"#);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Json<T> {
    value: T,
    text: String,
}

impl<T: Serialize> Json<T> {
    /// Wraps `value`, serialising it now; fails as `serde_json` does (a map
    /// whose keys are not strings, say).
    pub fn new(value: T) -> Result<Self, serde_json::Error> {
        let text = serde_json::to_string(&value)?;
        Ok(Self { value, text })
    }
}

impl<T> Json<T> {
    /// The value.
    pub fn get(&self) -> &T {
        &self.value
    }

    /// The value, unwrapped.
    pub fn into_inner(self) -> T {
        self.value
    }

    /// The JSON text stored.
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl<T> std::ops::Deref for Json<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

/// Two JSON values are equal when their values are.
impl<T: PartialEq> PartialEq for Json<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<T: Serialize + DeserializeOwned> SyncValue for Json<T> {
    const SQL_TYPE: SqlType = SqlType::Text;
    const DEFAULT_SQL: Option<&'static str> = None;

    fn to_value_ref(&self) -> ValueRef<'_> {
        ValueRef::Text(&self.text)
    }

    fn from_value_ref(value: ValueRef<'_>) -> Result<Self, ValueError> {
        match value {
            ValueRef::Text(text) => match serde_json::from_str(text) {
                Ok(value) => Ok(Self {
                    value,
                    text: text.to_owned(),
                }),
                Err(e) => Err(ValueError::Json(e.to_string())),
            },
            other => Err(ValueError::WrongType {
                expected: "TEXT",
                found: other.type_name(),
            }),
        }
    }
}

impl<T> crate::__private::DefaultLiteral for Json<T> {
    type Literal = &'static str;
}
