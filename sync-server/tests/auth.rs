//! Who may call the server: API keys, HS256 and RS256 tokens, and everything else
//! refused with 401 (or 403 for a user changing a schema).

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

mod common;

use common::*;
use reqwest::StatusCode;
use sync_runtime::Synced;
use sync_runtime::protocol::{API_KEY_HEADER, ErrorBody};

async fn schema_status(server: &TestServer, authorization: Option<&str>) -> reqwest::Response {
    let mut request = server.http.get(server.url(&format!("/v1/db/{DB}/schema")));
    if let Some(token) = authorization {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// The error body of a schema read with `token`, checked to be a 401.
async fn refused(server: &TestServer, token: &str) -> ErrorBody {
    error_body(
        schema_status(server, Some(token)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await
}

#[tokio::test]
async fn health_needs_no_credentials() {
    let server = TestServer::start().await;
    let response = server.http.get(server.url("/health")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = serde_json::from_str(&text(response).await).unwrap();
    assert_eq!(body, serde_json::json!({ "status": "ok" }));
}

#[tokio::test]
async fn a_request_without_credentials_gets_401() {
    let server = TestServer::with_todo_db().await;
    let error = error_body(schema_status(&server, None).await, StatusCode::UNAUTHORIZED).await;
    assert_eq!(error.code, "unauthorized");
    assert!(
        error.message.contains("no credentials"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn a_valid_hs256_token_is_accepted() {
    let server = TestServer::with_todo_db().await;
    let token = user_token("alice");
    let response = schema_status(&server, Some(&token)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let tables: Vec<sync_runtime::TableSchema> =
        serde_json::from_str(&text(response).await).unwrap();
    assert_eq!(tables, std::slice::from_ref(Todo::SCHEMA));
}

#[tokio::test]
async fn an_expired_token_gets_401() {
    let server = TestServer::with_todo_db().await;
    let token = hs256_token(&Claims {
        exp: Some(now() - 3600),
        ..Claims::valid("alice")
    });
    let error = refused(&server, &token).await;
    assert!(error.message.contains("expired"), "{}", error.message);
}

#[tokio::test]
async fn a_token_not_valid_yet_gets_401() {
    let server = TestServer::with_todo_db().await;
    let token = hs256_token(&Claims {
        nbf: Some(now() + 3600),
        ..Claims::valid("alice")
    });
    refused(&server, &token).await;
}

#[tokio::test]
async fn a_token_without_expiry_gets_401() {
    let server = TestServer::with_todo_db().await;
    let token = hs256_token(&Claims {
        exp: None,
        ..Claims::valid("alice")
    });
    let error = refused(&server, &token).await;
    assert!(error.message.contains("exp"), "{}", error.message);
}

#[tokio::test]
async fn a_wrong_signature_gets_401() {
    let server = TestServer::with_todo_db().await;
    let forged = hs256_token_with(&Claims::valid("alice"), "another secret");
    let error = refused(&server, &forged).await;
    assert!(error.message.contains("signature"), "{}", error.message);

    let other_rsa_key = rs256_token(&Claims::valid("alice"), "other-private.pem");
    refused(&server, &other_rsa_key).await;
}

#[tokio::test]
async fn an_unsigned_token_gets_401() {
    let server = TestServer::with_todo_db().await;
    let token = unsigned_token(&Claims::valid("alice"));
    refused(&server, &token).await;
}

#[tokio::test]
async fn an_rs256_token_is_accepted_with_the_right_public_key() {
    let server = TestServer::with_todo_db().await;
    let token = rs256_token(&Claims::valid("bob"), "rs256-private.pem");
    assert_eq!(
        schema_status(&server, Some(&token)).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_algorithm_without_a_configured_key_gets_401() {
    // Only RS256 is configured: an HS256 token, even one signed with the public
    // key's bytes (algorithm confusion), is refused.
    let server = TestServer::start_with(|config| config.auth.jwt_hs256_secret = None).await;
    server.create_todo_db().await;
    let public_pem = std::fs::read_to_string(keys_dir().join("rs256-public.pem")).unwrap();
    let confused = hs256_token_with(&Claims::valid("mallory"), &public_pem);
    let error = refused(&server, &confused).await;
    assert!(error.message.contains("not accepted"), "{}", error.message);
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let server = TestServer::start_with(|config| {
        config.auth.issuer = Some("https://auth.example".into());
        config.auth.audience = Some("synced".into());
    })
    .await;
    server.create_todo_db().await;
    let right = Claims {
        iss: Some("https://auth.example".into()),
        aud: Some("synced".into()),
        ..Claims::valid("alice")
    };
    let status = |claims: Claims| {
        let server = &server;
        async move {
            schema_status(server, Some(&hs256_token(&claims)))
                .await
                .status()
        }
    };
    assert_eq!(status(right.clone()).await, StatusCode::OK);
    let other_issuer = Claims {
        iss: Some("https://evil.example".into()),
        ..right.clone()
    };
    assert_eq!(status(other_issuer).await, StatusCode::UNAUTHORIZED);
    let other_audience = Claims {
        aud: Some("another-app".into()),
        ..right.clone()
    };
    assert_eq!(status(other_audience).await, StatusCode::UNAUTHORIZED);
    let no_issuer = Claims { iss: None, ..right };
    assert_eq!(status(no_issuer).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn api_keys_are_compared_with_the_configured_hashes() {
    let server = TestServer::with_todo_db().await;
    let with_key = |key: String| {
        server
            .http
            .get(server.url(&format!("/v1/db/{DB}/schema")))
            .header(API_KEY_HEADER, key)
            .send()
    };
    assert_eq!(
        with_key(ADMIN_KEY.into()).await.unwrap().status(),
        StatusCode::OK
    );
    let wrong = with_key("test-admin-kez".into()).await.unwrap();
    let error = error_body(wrong, StatusCode::UNAUTHORIZED).await;
    assert!(error.message.contains("API key"), "{}", error.message);
    // The configured hash itself is not a key.
    let hash = sync_server::auth::hash_key(ADMIN_KEY);
    assert_eq!(
        with_key(hash).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_user_cannot_change_a_schema() {
    let server = TestServer::with_todo_db().await;
    let response = server
        .http
        .put(server.url(&format!("/v1/db/{DB}/schema")))
        .bearer_auth(user_token("alice"))
        .body(serde_json::to_vec(&[Todo::SCHEMA]).unwrap())
        .send()
        .await
        .unwrap();
    let error = error_body(response, StatusCode::FORBIDDEN).await;
    assert_eq!(error.code, "forbidden");
}

#[tokio::test]
async fn unknown_databases_and_bad_names_are_told_apart() {
    let server = TestServer::start().await;
    let get = |name: &str| {
        server
            .as_admin(
                server
                    .http
                    .get(server.url(&format!("/v1/db/{name}/schema"))),
            )
            .send()
    };
    let missing = error_body(get("nothing-here").await.unwrap(), StatusCode::NOT_FOUND).await;
    assert_eq!(missing.code, "not_found");
    let bad = error_body(get("Bad.Name").await.unwrap(), StatusCode::BAD_REQUEST).await;
    assert_eq!(bad.code, "bad_request");
    // Without credentials, nothing is told about databases.
    let response = server
        .http
        .get(server.url("/v1/db/nothing-here/schema"))
        .send()
        .await
        .unwrap();
    error_body(response, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn errors_outside_the_handlers_have_an_error_body_too() {
    let server = TestServer::with_todo_db().await;
    let unknown = server
        .as_admin(server.http.get(server.url("/v2/anything")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_body(unknown, StatusCode::NOT_FOUND).await.code,
        "not_found"
    );
    let wrong_method = server
        .as_admin(server.http.get(server.url(&format!("/v1/db/{DB}/push"))))
        .send()
        .await
        .unwrap();
    error_body(wrong_method, StatusCode::METHOD_NOT_ALLOWED).await;
}
