# Every log group, created here so each has a retention and the customer managed key
# (a Lambda function left to create its own group would keep logs forever).

locals {
  log_groups = {
    api        = "/aws/lambda/${var.name_prefix}-api"
    controller = "/aws/lambda/${var.name_prefix}-controller"
    driver     = "/${var.name_prefix}/driver"
    api_access = "/${var.name_prefix}/api-access"
    msk        = "/${var.name_prefix}/msk-brokers"
    flow       = "/${var.name_prefix}/vpc-flow-rejected"
  }
}

resource "aws_cloudwatch_log_group" "this" {
  #checkov:skip=CKV_AWS_338:a year of retention is for audit trails; these are debugging logs of short-lived load tests (results live in S3), kept log_retention_days (default 14) to bound storage cost
  for_each = local.log_groups

  name              = each.value
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
}
