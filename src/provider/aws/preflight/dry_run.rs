//! A dry run of each distinct launch (RunInstances with `DryRun`), and of making the placement
//! group of the tests that launch into one (CreatePlacementGroup with `DryRun`): whether EC2
//! would take it, permissions included, as the call itself would ask; an
//! `UnauthorizedOperation`'s encoded reason is decoded through STS where this identity may, so
//! the problem says who may not do what.

use std::collections::BTreeMap;

use aws_config::{Region, SdkConfig};
use aws_sdk_ec2::error::ProvideErrorMetadata;

use crate::plan::{AwsSettings, Placement};
use crate::provider::aws::err;
use crate::provider::aws::instances::{LaunchRequest, run_request};
use crate::provider::aws::placement::{GROUP_TAGS, create_request};
use crate::provider::{Problem, ProviderError};

impl LaunchRequest {
    /// What makes two launches the same to EC2's checks (permissions, AMI, type, subnet).
    pub(super) fn key(&self) -> LaunchKey {
        (
            self.ami.clone(),
            self.instance_type.clone(),
            self.subnets.clone(),
            self.security_group_ids.clone(),
            self.spot.clone(),
            self.tags.clone(),
        )
    }
}

pub(super) type LaunchKey = (
    String,
    String,
    Vec<Option<String>>,
    Vec<String>,
    Option<Option<String>>,
    BTreeMap<String, String>,
);

/// RunInstances of `launch` with `DryRun`: EC2 answers `DryRunOperation` when the launch would
/// be taken, else why not (`UnauthorizedOperation` with an encoded reason, a parameter it
/// refuses), as a problem at the test's AMI.
pub(super) async fn dry_run(
    base: &SdkConfig,
    ec2: &aws_sdk_ec2::Client,
    launch: &LaunchRequest,
    s: &AwsSettings,
) -> Result<Option<Problem>, ProviderError> {
    let region = &launch.region;
    let subnet = &launch.subnets[0];
    let answer = run_request(ec2, launch, subnet, launch.spot.as_ref())
        .dry_run(true)
        .send()
        .await;
    let what = format!(
        "launch {} as {} {}",
        launch.ami,
        launch.instance_type,
        match subnet {
            Some(id) => format!("in {id}"),
            None => format!("in {region}'s default VPC"),
        }
    );
    let refused = refusal(base, region, "RunInstances", &what, answer).await?;
    Ok(refused.map(|message| Problem {
        keys: if s.base_ami.is_some() {
            &["base_ami"]
        } else {
            &["ami"]
        },
        value: s.named_ami().to_owned(),
        message,
    }))
}

/// CreatePlacementGroup of `placement` with `DryRun`, tagged as a test's group is: made before
/// a placed test's first launch, so refused there it would fail the test before it started;
/// as a problem at the tests' `placement_group`.
pub(super) async fn dry_run_group(
    base: &SdkConfig,
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    placement: Placement,
) -> Result<Option<Problem>, ProviderError> {
    let tags = GROUP_TAGS.map(|k| (k.to_owned(), "rallyctl-dry-run".to_owned()));
    let answer = create_request(ec2, "rallyctl-dry-run", placement, &tags.into())
        .dry_run(true)
        .send()
        .await;
    let what = format!(
        "make a {} placement group in {region}",
        placement.strategy()
    );
    let refused = refusal(base, region, "CreatePlacementGroup", &what, answer).await?;
    Ok(refused.map(|message| Problem {
        keys: &["placement_group"],
        value: placement.strategy().to_owned(),
        message,
    }))
}

/// Why EC2 would refuse the call a dry run of `operation` (to `what`, in words) stood for,
/// from its answer: none when it would take it (`DryRunOperation`); an error when EC2 gave no
/// answer (network, credentials), since the check itself failed then.
async fn refusal<T, E>(
    base: &SdkConfig,
    region: &str,
    operation: &'static str,
    what: &str,
    answer: Result<T, E>,
) -> Result<Option<String>, ProviderError>
where
    E: std::error::Error + ProvideErrorMetadata,
{
    let e = match answer {
        Ok(_) => return Ok(None),
        Err(e) => e,
    };
    Ok(Some(match (e.code(), e.message()) {
        (Some("DryRunOperation"), _) => return Ok(None),
        (Some("UnauthorizedOperation"), message) => format!(
            "this identity may not {what} ({operation} with DryRun: UnauthorizedOperation): {}",
            unauthorized_reason(base, region, message.unwrap_or_default()).await
        ),
        (Some(code), message) => format!(
            "EC2 would refuse to {what} ({operation} with DryRun): {code}: {}",
            message.unwrap_or("no message")
        ),
        (None, _) => return Err(err(operation, region, e)),
    }))
}

/// EC2 ends an `UnauthorizedOperation` message with this and the encoded reason.
const ENCODED: &str = "Encoded authorization failure message: ";

/// Why EC2 refused: the encoded reason decoded through STS where this identity may
/// (`sts:DecodeAuthorizationMessage`), else the command that decodes it.
async fn unauthorized_reason(base: &SdkConfig, region: &str, message: &str) -> String {
    let Some((_, encoded)) = message.split_once(ENCODED) else {
        return message.to_owned();
    };
    let sts = aws_sdk_sts::Client::from_conf(
        aws_sdk_sts::config::Builder::from(base)
            .region(Region::new(region.to_owned()))
            .build(),
    );
    let encoded = encoded.trim();
    match sts
        .decode_authorization_message()
        .encoded_message(encoded)
        .send()
        .await
    {
        Ok(out) => {
            let decoded = out.decoded_message().unwrap_or_default();
            decoded_reason(decoded).unwrap_or_else(|| decoded.to_owned())
        }
        Err(e) => format!(
            "EC2's reason is encoded, and this identity may not decode it ({}); an identity with sts:DecodeAuthorizationMessage may: `aws sts decode-authorization-message --encoded-message {encoded} --query DecodedMessage --output text`",
            err("DecodeAuthorizationMessage", region, e).message
        ),
    }
}

/// A decoded authorization message in one line: who may not do what on which resource, and
/// whether a policy denies it or none allows it.
fn decoded_reason(decoded: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(decoded).ok()?;
    let context = &v["context"];
    let action = context["action"].as_str()?;
    let who = context["principal"]["arn"]
        .as_str()
        .unwrap_or("this identity");
    let resource = context["resource"].as_str().unwrap_or("*");
    let why = if v["explicitDeny"].as_bool() == Some(true) {
        "a policy denies it explicitly"
    } else {
        "no policy allows it"
    };
    Some(format!("{who} may not {action} on {resource}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decoded_authorization_message_reads_as_who_may_not_do_what_and_why() {
        let decoded = r#"{"allowed":false,"explicitDeny":true,"matchedStatements":{"items":[]},"failures":{"items":[]},"context":{"principal":{"id":"AIDA","arn":"arn:aws:iam::1:user/ci"},"action":"ec2:RunInstances","resource":"arn:aws:ec2:eu-west-1:1:instance/*","conditions":{"items":[]}}}"#;
        assert_eq!(
            decoded_reason(decoded).as_deref(),
            Some(
                "arn:aws:iam::1:user/ci may not ec2:RunInstances on arn:aws:ec2:eu-west-1:1:instance/*: a policy denies it explicitly"
            )
        );
        assert_eq!(decoded_reason("not json"), None);
    }
}
