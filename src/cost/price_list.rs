//! The AWS Price List API (`GetProducts`, served from us-east-1): the on-demand hourly price
//! of a Linux instance type in a region, and the GB-month price of an EBS volume type there.
//!
//! Every answer is a list of JSON documents, one per product, in the format of the price list
//! files ("Reading the service price list file for an AWS service" in the AWS Billing user
//! guide): `product.attributes` names the instance, `terms.OnDemand.<offer>.priceDimensions.
//! <rate>.pricePerUnit.USD` is the price as a decimal string.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_pricing::config::http::HttpResponse;
use aws_sdk_pricing::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_pricing::operation::get_products::GetProductsError;
use aws_sdk_pricing::types::{Filter, FilterType};
use serde::Deserialize;
use tokio::sync::OnceCell;

use super::{Fetch, Key};

/// The Price List API answers only in us-east-1 (and two other regions), whatever the region
/// priced.
const ENDPOINT_REGION: &str = "us-east-1";

/// A plan must not stall on a machine without internet: one try, each part bounded.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// Products a `GetProducts` page may hold: the filters leave one or a few.
const PAGE_SIZE: i32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Not reached, timed out, no credentials, refused: every way of getting no answer.
    #[error("the Price List API failed: {0}")]
    Failed(String),
    #[error("the Price List API answered with something unreadable: product {item}: {what}")]
    Malformed { item: usize, what: String },
}

/// The Price List API through the SDK; the client is made at the first lookup, so a plan whose
/// prices are all cached loads no credentials.
#[derive(Default)]
pub struct PriceListApi {
    client: OnceCell<aws_sdk_pricing::Client>,
}

impl PriceListApi {
    /// With a client of the caller's: tests point one at a recorded answer.
    pub fn with_client(client: aws_sdk_pricing::Client) -> PriceListApi {
        PriceListApi {
            client: OnceCell::new_with(Some(client)),
        }
    }

    async fn client(&self) -> &aws_sdk_pricing::Client {
        self.client
            .get_or_init(|| async {
                let base = aws_config::defaults(BehaviorVersion::latest())
                    .region(aws_config::Region::new(ENDPOINT_REGION))
                    .retry_config(RetryConfig::disabled())
                    .timeout_config(timeouts())
                    .load()
                    .await;
                aws_sdk_pricing::Client::new(&base)
            })
            .await
    }
}

/// What bounds every Price List call.
pub fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

fn term(field: &str, value: &str) -> Filter {
    Filter::builder()
        .r#type(FilterType::TermMatch)
        .field(field)
        .value(value)
        .build()
        .expect("type, field and value are set")
}

impl Fetch for PriceListApi {
    type Error = FetchError;

    async fn fetch(&self, key: &Key) -> Result<Option<f64>, FetchError> {
        let filters = vec![
            term("instanceType", &key.instance_type),
            term("regionCode", &key.region),
            term("operatingSystem", "Linux"),
            term("tenancy", "Shared"),
            term("preInstalledSw", "NA"),
            term("capacitystatus", "Used"),
        ];
        on_demand_price(&self.products(filters).await?, "Hrs")
    }

    async fn fetch_storage(
        &self,
        region: &str,
        volume_type: &str,
    ) -> Result<Option<f64>, FetchError> {
        let filters = vec![
            term("productFamily", "Storage"),
            term("volumeApiName", volume_type),
            term("regionCode", region),
        ];
        on_demand_price(&self.products(filters).await?, "GB-Mo")
    }
}

impl PriceListApi {
    /// Every page of AmazonEC2's products that `filters` leave.
    async fn products(&self, filters: Vec<Filter>) -> Result<Vec<String>, FetchError> {
        let client = self.client().await;
        let mut documents = Vec::new();
        let mut next_token = None;
        loop {
            let page = client
                .get_products()
                .service_code("AmazonEC2")
                .set_filters(Some(filters.clone()))
                .max_results(PAGE_SIZE)
                .set_next_token(next_token)
                .send()
                .await
                .map_err(|e| FetchError::Failed(describe(&e)))?;
            documents.extend_from_slice(page.price_list());
            next_token = page.next_token().map(str::to_owned);
            if next_token.is_none() {
                break;
            }
        }
        Ok(documents)
    }
}

/// The service's code and message where it answered, else the HTTP status it answered with
/// (a server without the API) or the chain of causes (a timeout, no credentials), without the
/// SDK's dump of its internals, which `-v` shows.
fn describe(e: &SdkError<GetProductsError, HttpResponse>) -> String {
    if crate::ui::verbose() {
        return DisplayErrorContext(e).to_string();
    }
    if let (Some(code), Some(message)) = (e.code(), e.message()) {
        return format!("{code}: {message}");
    }
    if let Some(response) = e.raw_response() {
        return format!("HTTP {}", response.status().as_u16());
    }
    let mut causes: Vec<String> = Vec::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !causes.iter().any(|seen| seen.contains(&text)) {
            causes.push(text);
        }
        cause = c.source();
    }
    causes.join(": ")
}

/// The parts of a price list document read here.
#[derive(Deserialize)]
struct Product {
    terms: Terms,
}

#[derive(Deserialize)]
struct Terms {
    #[serde(rename = "OnDemand", default)]
    on_demand: std::collections::BTreeMap<String, Offer>,
}

#[derive(Deserialize)]
struct Offer {
    #[serde(rename = "priceDimensions")]
    price_dimensions: std::collections::BTreeMap<String, Dimension>,
}

#[derive(Deserialize)]
struct Dimension {
    unit: String,
    #[serde(rename = "pricePerUnit")]
    price_per_unit: std::collections::BTreeMap<String, String>,
}

/// The USD price per `unit` (`Hrs`, `GB-Mo`) among `documents`; none when they list none.
/// Where several products or dimensions remain after the filters, the highest price is taken:
/// the same on every call, and an estimate that errs towards paying more than thought.
pub fn on_demand_price(documents: &[String], unit: &str) -> Result<Option<f64>, FetchError> {
    let mut highest: Option<f64> = None;
    for (item, document) in documents.iter().enumerate() {
        let malformed = |what: String| FetchError::Malformed { item, what };
        let product: Product =
            serde_json::from_str(document).map_err(|e| malformed(e.to_string()))?;
        for (offer, o) in &product.terms.on_demand {
            for (rate, d) in &o.price_dimensions {
                if d.unit != unit {
                    continue;
                }
                let text = d.price_per_unit.get("USD").ok_or_else(|| {
                    malformed(format!(
                        "terms.OnDemand.{offer}.priceDimensions.{rate} has no USD price"
                    ))
                })?;
                let usd = text
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| {
                        malformed(format!(
                            "terms.OnDemand.{offer}.priceDimensions.{rate}.pricePerUnit.USD is `{text}`, no price"
                        ))
                    })?;
                highest = Some(highest.map_or(usd, |h| h.max(usd)));
            }
        }
    }
    Ok(highest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A product as `GetProducts` lists it for
    /// `aws pricing get-products --service-code AmazonEC2 --filters Type=TERM_MATCH,...`, built
    /// after the price list file format in the AWS Billing user guide ("Reading the service
    /// price list file for an AWS service": product attributes, then OnDemand and Reserved
    /// terms keyed by SKU and offer term code, priceDimensions keyed by rate code).
    fn product(instance_type: &str, region: &str, usd: &str, unit: &str) -> String {
        serde_json::json!({
            "product": {
                "productFamily": "Compute Instance",
                "attributes": {
                    "enhancedNetworkingSupported": "Yes",
                    "memory": "8 GiB",
                    "vcpu": "2",
                    "capacitystatus": "Used",
                    "locationType": "AWS Region",
                    "storage": "EBS only",
                    "instanceFamily": "General purpose",
                    "operatingSystem": "Linux",
                    "regionCode": region,
                    "physicalProcessor": "Intel Xeon Platinum 8175",
                    "preInstalledSw": "NA",
                    "location": "US East (N. Virginia)",
                    "servicecode": "AmazonEC2",
                    "licenseModel": "No License required",
                    "instanceType": instance_type,
                    "tenancy": "Shared",
                    "usagetype": "BoxUsage:m5.large",
                    "operation": "RunInstances",
                    "servicename": "Amazon Elastic Compute Cloud"
                },
                "sku": "2WTMTR9HDDT7AA73"
            },
            "serviceCode": "AmazonEC2",
            "terms": {
                "OnDemand": {
                    "2WTMTR9HDDT7AA73.JRTCKXETXF": {
                        "priceDimensions": {
                            "2WTMTR9HDDT7AA73.JRTCKXETXF.6YS6EN2CT7": {
                                "unit": unit,
                                "endRange": "Inf",
                                "description": format!("${usd} per On Demand Linux {instance_type} Instance Hour"),
                                "appliesTo": [],
                                "rateCode": "2WTMTR9HDDT7AA73.JRTCKXETXF.6YS6EN2CT7",
                                "beginRange": "0",
                                "pricePerUnit": {"USD": usd}
                            }
                        },
                        "sku": "2WTMTR9HDDT7AA73",
                        "effectiveDate": "2026-11-01T00:00:00Z",
                        "offerTermCode": "JRTCKXETXF",
                        "termAttributes": {}
                    }
                },
                "Reserved": {
                    "2WTMTR9HDDT7AA73.38NPMPTW36": {
                        "priceDimensions": {
                            "2WTMTR9HDDT7AA73.38NPMPTW36.2TG2D8R56U": {
                                "unit": "Quantity",
                                "description": "Upfront Fee",
                                "pricePerUnit": {"USD": "493"}
                            }
                        },
                        "sku": "2WTMTR9HDDT7AA73",
                        "offerTermCode": "38NPMPTW36",
                        "termAttributes": {"LeaseContractLength": "3yr", "OfferingClass": "standard", "PurchaseOption": "Partial Upfront"}
                    }
                }
            },
            "version": "20261127204519",
            "publicationDate": "2026-11-27T20:45:19Z"
        })
        .to_string()
    }

    /// A `GetProducts` answer (awsJson 1.1): the documents as strings, a page token when more
    /// follow.
    fn answer(documents: &[String], next_token: Option<&str>) -> String {
        serde_json::json!({
            "FormatVersion": "aws_v1",
            "PriceList": documents,
            "NextToken": next_token,
        })
        .to_string()
    }

    /// Serves `pages` in turn, one HTTP request each, on a port of 127.0.0.1; returns the real
    /// SDK client pointed at it and the request bodies it read.
    async fn serve(
        pages: Vec<(u16, String)>,
    ) -> (
        aws_sdk_pricing::Client,
        tokio::task::JoinHandle<Vec<String>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let mut requests = Vec::new();
            for (status, body) in pages {
                let (mut socket, _) = listener.accept().await.unwrap();
                requests.push(read_request(&mut socket).await);
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                socket.write_all(response.as_bytes()).await.unwrap();
                socket.shutdown().await.unwrap();
            }
            requests
        });
        (client_at(url), server)
    }

    async fn read_request(socket: &mut tokio::net::TcpStream) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = socket.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    return String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into_owned();
                }
            }
            assert!(n > 0, "the client closed before its request was complete");
        }
    }

    fn m5_large() -> Key {
        Key {
            region: "us-east-1".into(),
            instance_type: "m5.large".into(),
        }
    }

    #[tokio::test]
    async fn the_on_demand_price_is_read_through_the_sdk_with_the_filters_and_pages() {
        let (client, server) = serve(vec![
            (200, answer(&[], Some("page-2"))),
            (
                200,
                answer(
                    &[product("m5.large", "us-east-1", "0.0960000000", "Hrs")],
                    None,
                ),
            ),
        ])
        .await;
        let api = PriceListApi::with_client(client);
        assert_eq!(api.fetch(&m5_large()).await.unwrap(), Some(0.096));
        let requests = server.await.unwrap();
        let first: serde_json::Value = serde_json::from_str(&requests[0]).unwrap();
        assert_eq!(first["ServiceCode"], "AmazonEC2");
        let filters: Vec<(String, String)> = first["Filters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                assert_eq!(f["Type"], "TERM_MATCH");
                (
                    f["Field"].as_str().unwrap().into(),
                    f["Value"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(
            filters,
            [
                ("instanceType", "m5.large"),
                ("regionCode", "us-east-1"),
                ("operatingSystem", "Linux"),
                ("tenancy", "Shared"),
                ("preInstalledSw", "NA"),
                ("capacitystatus", "Used"),
            ]
            .map(|(f, v)| (f.to_owned(), v.to_owned()))
        );
        let second: serde_json::Value = serde_json::from_str(&requests[1]).unwrap();
        assert_eq!(second["NextToken"], "page-2");
    }

    /// A gp3 volume's product as `aws pricing get-products --service-code AmazonEC2 --filters
    /// Type=TERM_MATCH,Field=productFamily,Value=Storage Type=TERM_MATCH,Field=volumeApiName,
    /// Value=gp3 ...` lists it: priced per GB-month, beside the IOPS and throughput products
    /// of other families that the filters leave out.
    fn gp3_product(region: &str, usd: &str) -> String {
        serde_json::json!({
            "product": {
                "productFamily": "Storage",
                "attributes": {
                    "maxThroughputvolume": "1000 MiB/s",
                    "volumeType": "General Purpose",
                    "maxIopsvolume": "16000",
                    "usagetype": "EBS:VolumeUsage.gp3",
                    "locationType": "AWS Region",
                    "maxVolumeSize": "16 TiB",
                    "storageMedia": "SSD-backed",
                    "regionCode": region,
                    "servicecode": "AmazonEC2",
                    "volumeApiName": "gp3",
                    "location": "US East (N. Virginia)",
                    "servicename": "Amazon Elastic Compute Cloud",
                    "operation": ""
                },
                "sku": "7U7TWP44UP36AT3R"
            },
            "serviceCode": "AmazonEC2",
            "terms": {
                "OnDemand": {
                    "7U7TWP44UP36AT3R.JRTCKXETXF": {
                        "priceDimensions": {
                            "7U7TWP44UP36AT3R.JRTCKXETXF.6YS6EN2CT7": {
                                "unit": "GB-Mo",
                                "endRange": "Inf",
                                "description": "$0.08 per GB-month of General Purpose (gp3) provisioned storage - US East (N. Virginia)",
                                "appliesTo": [],
                                "rateCode": "7U7TWP44UP36AT3R.JRTCKXETXF.6YS6EN2CT7",
                                "beginRange": "0",
                                "pricePerUnit": {"USD": usd}
                            }
                        },
                        "sku": "7U7TWP44UP36AT3R",
                        "effectiveDate": "2026-11-01T00:00:00Z",
                        "offerTermCode": "JRTCKXETXF",
                        "termAttributes": {}
                    }
                }
            },
            "version": "20261127204519",
            "publicationDate": "2026-11-27T20:45:19Z"
        })
        .to_string()
    }

    #[tokio::test]
    async fn an_ebs_volume_type_is_priced_per_gb_month_with_its_filters() {
        let (client, server) = serve(vec![(
            200,
            answer(&[gp3_product("eu-west-1", "0.0880000000")], None),
        )])
        .await;
        let api = PriceListApi::with_client(client);
        assert_eq!(
            api.fetch_storage("eu-west-1", "gp3").await.unwrap(),
            Some(0.088)
        );
        let requests = server.await.unwrap();
        let asked: serde_json::Value = serde_json::from_str(&requests[0]).unwrap();
        assert_eq!(asked["ServiceCode"], "AmazonEC2");
        let filters: Vec<(&str, &str)> = (asked["Filters"].as_array().unwrap().iter())
            .map(|f| (f["Field"].as_str().unwrap(), f["Value"].as_str().unwrap()))
            .collect();
        assert_eq!(
            filters,
            [
                ("productFamily", "Storage"),
                ("volumeApiName", "gp3"),
                ("regionCode", "eu-west-1")
            ]
        );
        // An instance's hourly price is no GB-month price.
        let hourly = [product("m5.large", "eu-west-1", "0.107", "Hrs")];
        assert_eq!(on_demand_price(&hourly, "GB-Mo").unwrap(), None);
    }

    #[tokio::test]
    async fn an_empty_price_list_is_no_price() {
        let (client, server) = serve(vec![(200, answer(&[], None))]).await;
        let api = PriceListApi::with_client(client);
        assert_eq!(api.fetch(&m5_large()).await.unwrap(), None);
        server.await.unwrap();
    }

    /// A refusal, and what a server without the API answers (moto, which the end-to-end tests
    /// point the SDK at, has no Price List API): a failure naming why, never a price.
    #[tokio::test]
    async fn a_refusal_or_a_server_without_the_api_is_a_failure_not_a_price() {
        let refusal = r#"{"__type":"AccessDeniedException","message":"User is not authorized to perform: pricing:GetProducts"}"#;
        for (status, body, says) in [
            (
                400,
                refusal,
                "AccessDeniedException: User is not authorized",
            ),
            (404, "<html><title>404 Not Found</title></html>", "HTTP 404"),
        ] {
            let (client, server) = serve(vec![(status, body.into())]).await;
            let api = PriceListApi::with_client(client);
            let err = api.fetch(&m5_large()).await.unwrap_err().to_string();
            assert!(
                err.starts_with("the Price List API failed: ") && err.contains(says),
                "{err}"
            );
            server.await.unwrap();
        }
    }

    /// The real client, as rallyctl configures it, asking `url`.
    fn client_at(url: String) -> aws_sdk_pricing::Client {
        let config = aws_sdk_pricing::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(aws_config::Region::new(ENDPOINT_REGION))
            .credentials_provider(aws_sdk_pricing::config::Credentials::new(
                "AKIDTEST", "secret", None, None, "test",
            ))
            .endpoint_url(url)
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts())
            .build();
        aws_sdk_pricing::Client::from_conf(config)
    }

    #[tokio::test]
    async fn a_closed_port_fails_fast() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let api = PriceListApi::with_client(client_at(url));
        let started = std::time::Instant::now();
        let err = api.fetch(&m5_large()).await.unwrap_err();
        assert!(matches!(err, FetchError::Failed(_)), "{err}");
        assert!(
            started.elapsed() < OPERATION_TIMEOUT,
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn several_products_and_dimensions_give_the_highest_hourly_price() {
        let documents = [
            product("m5.large", "us-east-1", "0.0960000000", "Hrs"),
            product("m5.large", "us-east-1", "0.1010000000", "Hrs"),
            // Not an hourly rate: left out.
            product("m5.large", "us-east-1", "5.0000000000", "Quantity"),
        ];
        assert_eq!(on_demand_price(&documents, "Hrs").unwrap(), Some(0.101));
        let mut reversed = documents.clone();
        reversed.reverse();
        assert_eq!(on_demand_price(&reversed, "Hrs").unwrap(), Some(0.101));
    }

    #[test]
    fn malformed_documents_are_named() {
        let err = on_demand_price(&["{not json".into()], "Hrs")
            .unwrap_err()
            .to_string();
        assert!(err.contains("product 0: key must be a string"), "{err}");
        let no_terms = serde_json::json!({"product": {}}).to_string();
        let err = on_demand_price(
            &[product("m5.large", "us-east-1", "0.1", "Hrs"), no_terms],
            "Hrs",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("product 1: missing field `terms`"), "{err}");
        let err = on_demand_price(&[product("m5.large", "us-east-1", "free", "Hrs")], "Hrs")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "priceDimensions.2WTMTR9HDDT7AA73.JRTCKXETXF.6YS6EN2CT7.pricePerUnit.USD is `free`"
            ),
            "{err}"
        );
        let euro = product("m5.large", "us-east-1", "0.1", "Hrs").replace("\"USD\"", "\"EUR\"");
        let err = on_demand_price(&[euro], "Hrs").unwrap_err().to_string();
        assert!(err.contains("has no USD price"), "{err}");
    }
}
