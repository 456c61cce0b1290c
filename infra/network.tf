# The network: one VPC, a private subnet in each of two AZs for the drivers, the MSK
# brokers and the two functions, and no route to the internet unless enable_nat_gateway.
#
# NAT gateway or VPC endpoints? Judged by what each costs left idle (us-east-1 list
# prices):
#
#   interface endpoint   $0.01/h per AZ  = $7.30/month per endpoint per AZ (+ $0.01/GB)
#   NAT gateway          $0.045/h        = $32.85/month (+ $0.045/GB)
#                        + its public IPv4 address $0.005/h = $3.65/month
#   S3 gateway endpoint  free
#
# What must be reached without the internet:
#   drivers      ECR (ecr.api, ecr.dkr; image layers come from S3), CloudWatch Logs (logs)
#   functions    ECS (ecs: RunTask, StopTask, DescribeTasks), S3 (state)
#   MSK event source mappings   Lambda (lambda) and STS (sts): the pollers sit in the
#                cluster's subnets and invoke the function from there
# = six interface endpoints: $43.80/month in one AZ (the default; the other AZ reaches
# them across zones), $87.60/month in two. One NAT gateway alone would be $36.50/month,
# a little less than the one-AZ endpoints, but it needs security groups open to 0.0.0.0/0
# on 443 for every AWS API, while the endpoints let each group reach exactly the endpoints'
# group. For a tool whose job is to send a lot of traffic somewhere, "no path to the
# internet unless asked" is worth the $7.30/month: the endpoints are the default, and
# enable_nat_gateway adds the NAT only for targets on the internet.

resource "aws_vpc" "this" {
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true # the interface endpoints' private DNS names need both

  tags = { Name = var.name_prefix }
}

# The VPC's default security group is attached to nothing here; with no rules it
# allows nothing, should anything ever land in it.
resource "aws_default_security_group" "this" {
  vpc_id = aws_vpc.this.id

  tags = { Name = "${var.name_prefix}-default-unused" }
}

resource "aws_subnet" "private" {
  count = 2

  vpc_id                  = aws_vpc.this.id
  availability_zone       = local.azs[count.index]
  cidr_block              = cidrsubnet(var.vpc_cidr, 4, count.index)
  map_public_ip_on_launch = false

  tags = { Name = "${var.name_prefix}-private-${local.azs[count.index]}" }
}

resource "aws_route_table" "private" {
  vpc_id = aws_vpc.this.id

  tags = { Name = "${var.name_prefix}-private" }
}

resource "aws_route_table_association" "private" {
  count = 2

  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private.id
}

# --- VPC endpoints -----------------------------------------------------------------------

# Gateway endpoint (free): the state bucket for the functions, and ECR's image layers,
# which Fargate downloads from S3. Its policy lets nothing else through.
resource "aws_vpc_endpoint" "s3" {
  vpc_id            = aws_vpc.this.id
  service_name      = "com.amazonaws.${var.region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = [aws_route_table.private.id]
  policy            = data.aws_iam_policy_document.s3_endpoint.json

  tags = { Name = "${var.name_prefix}-s3" }
}

data "aws_iam_policy_document" "s3_endpoint" {
  #checkov:skip=CKV_AWS_283:the ECR layer statement must name "*": Fargate fetches layers with URLs ECR presigns, so the caller is not a principal of this account; the statement allows only GetObject on that one AWS bucket
  statement {
    sid       = "StateBucket"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"]
    resources = [aws_s3_bucket.state.arn, "${aws_s3_bucket.state.arn}/*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"] # any principal of this account, as its IAM allows
    }
  }

  statement {
    sid       = "EcrImageLayers"
    actions   = ["s3:GetObject"]
    resources = ["arn:${local.partition}:s3:::prod-${var.region}-starport-layer-bucket/*"]

    principals {
      type        = "AWS"
      identifiers = ["*"]
    }
  }
}

locals {
  interface_endpoints = toset(["ecr.api", "ecr.dkr", "logs", "ecs", "lambda", "sts"])
}

resource "aws_vpc_endpoint" "interface" {
  for_each = local.interface_endpoints

  vpc_id              = aws_vpc.this.id
  service_name        = "com.amazonaws.${var.region}.${each.key}"
  vpc_endpoint_type   = "Interface"
  private_dns_enabled = true
  subnet_ids          = slice(aws_subnet.private[*].id, 0, var.vpc_endpoint_az_count)
  security_group_ids  = [aws_security_group.endpoints.id]

  tags = { Name = "${var.name_prefix}-${each.key}" }
}

# --- security groups ---------------------------------------------------------------------
#
# Kafka with IAM auth listens on 9098 inside the VPC. The MSK event source mappings'
# pollers use the cluster's own subnets and security group, hence the self-reference on
# the MSK group and its way to the Lambda and STS endpoints.

resource "aws_security_group" "drivers" {
  #checkov:skip=CKV2_AWS_5:attached at run time: the functions pass it to RunTask (LOADWAVE_ECS_SECURITY_GROUPS) for every driver task
  name        = "${var.name_prefix}-drivers"
  description = "loadwave driver tasks: MSK, the VPC endpoints and allowed_target_cidrs only"
  vpc_id      = aws_vpc.this.id

  tags = { Name = "${var.name_prefix}-drivers" }
}

resource "aws_security_group" "functions" {
  name        = "${var.name_prefix}-functions"
  description = "loadwave Lambda functions: MSK and the VPC endpoints only"
  vpc_id      = aws_vpc.this.id

  tags = { Name = "${var.name_prefix}-functions" }
}

resource "aws_security_group" "msk" {
  name        = "${var.name_prefix}-msk"
  description = "loadwave MSK brokers and the event source mappings' pollers"
  vpc_id      = aws_vpc.this.id

  tags = { Name = "${var.name_prefix}-msk" }
}

resource "aws_security_group" "endpoints" {
  name        = "${var.name_prefix}-endpoints"
  description = "loadwave interface VPC endpoints: HTTPS from the drivers, functions and MSK pollers"
  vpc_id      = aws_vpc.this.id

  tags = { Name = "${var.name_prefix}-endpoints" }
}

locals {
  # Groups that talk to MSK and to the endpoints.
  kafka_clients = {
    drivers   = aws_security_group.drivers.id
    functions = aws_security_group.functions.id
    msk       = aws_security_group.msk.id
  }
}

resource "aws_vpc_security_group_ingress_rule" "msk_from_clients" {
  for_each = local.kafka_clients

  security_group_id            = aws_security_group.msk.id
  description                  = "Kafka (SASL/IAM over TLS) from ${each.key}"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = 9098
  to_port                      = 9098
}

resource "aws_vpc_security_group_egress_rule" "clients_to_msk" {
  for_each = local.kafka_clients

  security_group_id            = each.value
  description                  = "Kafka (SASL/IAM over TLS) to the MSK brokers"
  referenced_security_group_id = aws_security_group.msk.id
  ip_protocol                  = "tcp"
  from_port                    = 9098
  to_port                      = 9098
}

resource "aws_vpc_security_group_ingress_rule" "endpoints_from_clients" {
  for_each = local.kafka_clients

  security_group_id            = aws_security_group.endpoints.id
  description                  = "HTTPS to the AWS APIs from ${each.key}"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
}

resource "aws_vpc_security_group_egress_rule" "clients_to_endpoints" {
  for_each = local.kafka_clients

  security_group_id            = each.value
  description                  = "HTTPS to the interface VPC endpoints"
  referenced_security_group_id = aws_security_group.endpoints.id
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
}

resource "aws_vpc_security_group_egress_rule" "s3" {
  for_each = {
    drivers   = aws_security_group.drivers.id
    functions = aws_security_group.functions.id
  }

  security_group_id = each.value
  description       = "HTTPS to S3 through the gateway endpoint (state bucket, image layers)"
  prefix_list_id    = aws_vpc_endpoint.s3.prefix_list_id
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "drivers_to_targets" {
  for_each = toset(var.allowed_target_cidrs)

  security_group_id = aws_security_group.drivers.id
  description       = "Load to a target under test (allowed_target_cidrs)"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 0
  to_port           = 65535
}

# --- optional NAT gateway, for targets on the internet -----------------------------------

resource "aws_internet_gateway" "this" {
  count = var.enable_nat_gateway ? 1 : 0

  vpc_id = aws_vpc.this.id

  tags = { Name = var.name_prefix }
}

resource "aws_subnet" "public" {
  count = var.enable_nat_gateway ? 1 : 0

  vpc_id                  = aws_vpc.this.id
  availability_zone       = local.azs[0]
  cidr_block              = cidrsubnet(var.vpc_cidr, 4, 8)
  map_public_ip_on_launch = false # only the NAT gateway lives here, with its own address

  tags = { Name = "${var.name_prefix}-public-nat" }
}

resource "aws_route_table" "public" {
  count = var.enable_nat_gateway ? 1 : 0

  vpc_id = aws_vpc.this.id

  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.this[0].id
  }

  tags = { Name = "${var.name_prefix}-public" }
}

resource "aws_route_table_association" "public" {
  count = var.enable_nat_gateway ? 1 : 0

  subnet_id      = aws_subnet.public[0].id
  route_table_id = aws_route_table.public[0].id
}

resource "aws_eip" "nat" {
  count = var.enable_nat_gateway ? 1 : 0

  domain = "vpc"

  tags = { Name = "${var.name_prefix}-nat" }
}

resource "aws_nat_gateway" "this" {
  count = var.enable_nat_gateway ? 1 : 0

  allocation_id = aws_eip.nat[0].id
  subnet_id     = aws_subnet.public[0].id

  tags = { Name = var.name_prefix }

  depends_on = [aws_internet_gateway.this]
}

# Only the drivers' security group has rules towards internet addresses (and only to
# allowed_target_cidrs), so this route serves nothing else.
resource "aws_route" "private_nat" {
  count = var.enable_nat_gateway ? 1 : 0

  route_table_id         = aws_route_table.private.id
  destination_cidr_block = "0.0.0.0/0"
  nat_gateway_id         = aws_nat_gateway.this[0].id
}

# --- VPC flow logs: rejected traffic only ------------------------------------------------
#
# What the security groups refused (a driver aimed at a target outside
# allowed_target_cidrs, say) is the interesting part, and a small one; accepted flows of
# a load test would be the bulk of the ingestion bill ($0.50/GB).

resource "aws_flow_log" "rejected" {
  vpc_id                   = aws_vpc.this.id
  traffic_type             = "REJECT"
  log_destination_type     = "cloud-watch-logs"
  log_destination          = aws_cloudwatch_log_group.this["flow"].arn
  iam_role_arn             = aws_iam_role.flow_logs.arn
  max_aggregation_interval = 600
}
