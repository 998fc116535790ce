//! Backend decoders, output encoders, and no-op pass-through.

use std::time::{Duration, Instant};

use http::Method;
use http_body_util::BodyExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Backend, Gateway, Reply, config};

#[tokio::test]
async fn backend_encodings_decode_to_objects() {
    let xml = Backend::start(|_| Reply::raw(200, "application/xml", r#"<user id="3"><name>Ada</name></user>"#)).await;
    let text = Backend::start(|_| Reply::raw(200, "text/plain", "hello")).await;
    let arr = Backend::start(|_| Reply::raw(200, "application/json", "[1,2]")).await;
    let gw = Gateway::start(config(json!([
        {"endpoint": "/xml", "backend": [{"host": [xml.url], "url_pattern": "/", "encoding": "xml"}]},
        {"endpoint": "/string", "backend": [{"host": [text.url], "url_pattern": "/", "encoding": "string"}]},
        {"endpoint": "/safe", "backend": [{"host": [arr.url], "url_pattern": "/", "encoding": "safejson"}]},
        {"endpoint": "/strict", "backend": [{"host": [arr.url], "url_pattern": "/"}]}
    ])))
    .await;
    assert_eq!(gw.get("/xml").await.json(), json!({"user": {"-id": "3", "name": "Ada"}}));
    assert_eq!(gw.get("/string").await.json(), json!({"content": "hello"}));
    assert_eq!(gw.get("/safe").await.json(), json!({"collection": [1, 2]}));
    assert_eq!(gw.get("/strict").await.status, 500, "an array without is_collection is a decode error");
}

#[tokio::test]
async fn output_encodings() {
    let list = Backend::start(|_| Reply::raw(200, "application/json", r#"[{"id":1},{"id":2}]"#)).await;
    let text = Backend::start(|_| Reply::raw(200, "text/plain", "plain words")).await;
    let obj = Backend::json(json!({"user": {"name": "Ada", "langs": ["en", "fr"]}})).await;
    let gw = Gateway::start(config(json!([
        {"endpoint": "/coll", "output_encoding": "json-collection", "backend": [{"host": [list.url], "url_pattern": "/", "is_collection": true}]},
        {"endpoint": "/str", "output_encoding": "string", "backend": [{"host": [text.url], "url_pattern": "/", "encoding": "string"}]},
        {"endpoint": "/xml", "output_encoding": "xml", "backend": [{"host": [obj.url], "url_pattern": "/"}]},
        {"endpoint": "/yaml", "output_encoding": "yaml", "backend": [{"host": [obj.url], "url_pattern": "/"}]},
        {"endpoint": "/neg", "output_encoding": "negotiate", "backend": [{"host": [obj.url], "url_pattern": "/"}]}
    ])))
    .await;
    let r = gw.get("/coll").await;
    assert_eq!(r.text(), r#"[{"id":1},{"id":2}]"#);
    let r = gw.get("/str").await;
    assert_eq!((r.text().as_str(), r.header("content-type")), ("plain words", Some("text/plain; charset=utf-8")));
    let r = gw.get("/xml").await;
    assert_eq!(r.text(), "<user><langs>en</langs><langs>fr</langs><name>Ada</name></user>");
    assert_eq!(r.header("content-type"), Some("application/xml; charset=utf-8"));
    let r = gw.get("/yaml").await;
    assert!(r.text().contains("name: Ada"), "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/x-yaml; charset=utf-8"));

    let r = gw.send(Method::GET, "/neg", &[("Accept", "application/xml")], "").await;
    assert!(r.text().starts_with("<user>"));
    let r = gw.send(Method::GET, "/neg", &[("Accept", "application/json")], "").await;
    assert_eq!(r.json(), json!({"user": {"name": "Ada", "langs": ["en", "fr"]}}));
    let r = gw.send(Method::GET, "/neg", &[], "").await;
    assert_eq!(r.header("content-type"), Some("application/json; charset=utf-8"));
}

#[tokio::test]
async fn no_op_passes_status_headers_and_cookies_through() {
    let b = Backend::start(|s| {
        Reply::raw(418, "application/octet-stream", format!("raw {}", String::from_utf8_lossy(&s.body)))
            .header("set-cookie", "a=1")
            .header("set-cookie", "b=2")
            .header("x-backend", "yes")
    })
    .await;
    let gw = Gateway::start(config(json!([{"endpoint": "/raw", "method": "POST", "output_encoding": "no-op",
        "backend": [{"host": [b.url], "url_pattern": "/", "encoding": "no-op"}]}])))
    .await;
    let r = gw.send(Method::POST, "/raw", &[], "body").await;
    assert_eq!(r.status, 418);
    assert_eq!(r.text(), "raw body");
    assert_eq!(r.header("x-backend"), Some("yes"));
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    let cookies: Vec<_> = r.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
}

/// A backend that sends its headers and a first chunk, then the rest two seconds later.
async fn trickling_backend() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n").await;
                tokio::time::sleep(Duration::from_millis(2000)).await;
                let _ = s.write_all(b"4\r\nlast\r\n0\r\n\r\n").await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn no_op_streams_without_buffering() {
    let url = trickling_backend().await;
    let gw = Gateway::start(config(json!([{"endpoint": "/stream", "output_encoding": "no-op",
        "backend": [{"host": [url], "url_pattern": "/"}]}])))
    .await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::client::legacy::connect::HttpConnector::new());
    let started = Instant::now();
    let resp = client.get(format!("{}/stream", gw.url).parse().unwrap()).await.unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"first");
    assert!(started.elapsed() < Duration::from_millis(1500), "first chunk took {:?}", started.elapsed());
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"last");
}
