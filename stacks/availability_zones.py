"""Availability Zones (by AZ ID) where the portal's subnets may go, per region.

CloudFront VPC origins are not offered in every Availability Zone; a subnet of the internal ALB
in such a zone fails the deploy. The CloudFront Developer Guide ("Restrict access with VPC
origins", supported Regions and Availability Zones) names them, e.g. `use1-az3` in us-east-1:
https://docs.aws.amazon.com/AmazonCloudFront/latest/DeveloperGuide/private-content-vpc-origins.html

AZ *names* (us-east-1a) map to different zones in each account; AZ *IDs* (use1-az1) do not, so
the stack places subnets by AZ ID (a CfnMapping on AWS::Region: no AWS call at synth), and
`scripts/preflight.py` checks that the account has enough of them. The subnets use the first
`portal.max_azs` IDs of a region's list. No AWS SDK or CDK imports: preflight reads this too.
"""

from __future__ import annotations

# Region -> AZ IDs where VPC origins are offered, most widely available first. Zones left out:
# use1-az3 (us-east-1; no VPC origins), usw1-az2 and apne1-az3 (closed to new accounts), and
# cac1-az3 (no such zone).
VPC_ORIGIN_AZ_IDS: dict[str, tuple[str, ...]] = {
    "us-east-1": ("use1-az1", "use1-az2", "use1-az4", "use1-az5", "use1-az6"),
    "us-east-2": ("use2-az1", "use2-az2", "use2-az3"),
    "us-west-1": ("usw1-az1", "usw1-az3"),
    "us-west-2": ("usw2-az1", "usw2-az2", "usw2-az3", "usw2-az4"),
    "ca-central-1": ("cac1-az1", "cac1-az2", "cac1-az4"),
    "sa-east-1": ("sae1-az1", "sae1-az2", "sae1-az3"),
    "eu-west-1": ("euw1-az1", "euw1-az2", "euw1-az3"),
    "eu-west-2": ("euw2-az1", "euw2-az2", "euw2-az3"),
    "eu-west-3": ("euw3-az1", "euw3-az2", "euw3-az3"),
    "eu-central-1": ("euc1-az1", "euc1-az2", "euc1-az3"),
    "eu-north-1": ("eun1-az1", "eun1-az2", "eun1-az3"),
    "ap-south-1": ("aps1-az1", "aps1-az2", "aps1-az3"),
    "ap-northeast-1": ("apne1-az1", "apne1-az2", "apne1-az4"),
    "ap-northeast-2": ("apne2-az1", "apne2-az2", "apne2-az3", "apne2-az4"),
    "ap-southeast-1": ("apse1-az1", "apse1-az2", "apse1-az3"),
    "ap-southeast-2": ("apse2-az1", "apse2-az2", "apse2-az3"),
}
# Zones where VPC origins are known not to be offered (never listed above).
NO_VPC_ORIGINS = frozenset({"use1-az3"})


def subnet_az_ids(region: str, count: int) -> tuple[str, ...] | None:
    """The AZ IDs the stack puts its subnets in for `region`, or None when it cannot."""
    allowed = VPC_ORIGIN_AZ_IDS.get(region, ())
    return allowed[:count] if len(allowed) >= count else None
