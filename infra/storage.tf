# The state bucket: LOADWAVE_STORE=s3://BUCKET/state. Under state/ the functions keep
# tests/{id}.json, active/{id} markers and index.json, with conditional writes.

# No server access logs (see the checkov skip below for why).
#tfsec:ignore:aws-s3-enable-bucket-logging
resource "aws_s3_bucket" "state" {
  #checkov:skip=CKV_AWS_18:server access logs would need a second bucket for one small prefix written only by two IAM roles; CloudTrail data events cover audit needs if the account wants them
  #checkov:skip=CKV_AWS_144:test state is disposable (a test can be re-run) and cross-region replication would double the storage and request bill
  #checkov:skip=CKV2_AWS_62:nothing consumes events from this bucket; the functions read it directly
  bucket = "${var.name_prefix}-state-${local.account_id}-${var.region}"

  # `make destroy` removes the stack with its test history; versioning would otherwise
  # leave the bucket undeletable.
  force_destroy = true
}

resource "aws_s3_bucket_ownership_controls" "state" {
  bucket = aws_s3_bucket.state.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "state" {
  bucket = aws_s3_bucket.state.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "state" {
  bucket = aws_s3_bucket.state.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.this.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_versioning" "state" {
  bucket = aws_s3_bucket.state.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "state" {
  bucket = aws_s3_bucket.state.id

  # A running test's snapshot is rewritten every second, each write leaving a noncurrent
  # version: keep those only a few days, and drop the delete markers left behind.
  rule {
    id     = "housekeeping"
    status = "Enabled"

    filter {}

    expiration {
      expired_object_delete_marker = true
    }

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  rule {
    id     = "state-expiration"
    status = "Enabled"

    filter {
      prefix = "state/"
    }

    expiration {
      days = var.state_expiration_days
    }
  }

  depends_on = [aws_s3_bucket_versioning.state]
}

resource "aws_s3_bucket_policy" "state" {
  bucket = aws_s3_bucket.state.id
  policy = data.aws_iam_policy_document.state_bucket.json

  depends_on = [aws_s3_bucket_public_access_block.state]
}

data "aws_iam_policy_document" "state_bucket" {
  statement {
    sid       = "DenyPlainHttp"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.state.arn, "${aws_s3_bucket.state.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}
