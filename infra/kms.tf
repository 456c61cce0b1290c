# One customer managed key for everything at rest: the state bucket, the log groups, the
# ECR repositories and the MSK brokers' volumes. $1/month plus $0.03 per 10,000 requests;
# the bucket uses an S3 Bucket Key, so S3 asks KMS about once per object batch rather than
# on every GET and PUT of a running test's state.

resource "aws_kms_key" "this" {
  description             = "loadwave ${var.name_prefix}: state bucket, logs, images, MSK"
  enable_key_rotation     = true
  deletion_window_in_days = 7
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name_prefix}"
  target_key_id = aws_kms_key.this.key_id
}

# In a key policy "*" as the resource means this key. The account statement hands the
# key's use to IAM policies (the functions get kms:Decrypt/GenerateDataKey via S3 only;
# S3, ECR and MSK use grants made by the principal that creates them); CloudWatch Logs
# can use it for this account's log groups only.
data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:a key policy's "*" resource is the key itself; the account statement delegates to IAM, the standard key policy
  #checkov:skip=CKV_AWS_111:a key policy's "*" resource is the key itself
  #checkov:skip=CKV_AWS_356:a key policy's "*" resource is the key itself
  statement {
    sid       = "AccountAdministersThroughIam"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid = "CloudWatchLogsForThisAccount"
    actions = [
      "kms:Encrypt*",
      "kms:Decrypt*",
      "kms:ReEncrypt*",
      "kms:GenerateDataKey*",
      "kms:Describe*",
    ]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:*"]
    }
  }
}
