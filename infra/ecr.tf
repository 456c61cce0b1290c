# Image repositories: the driver (run by ECS for every test), the target server and the
# orchestrator (for running either elsewhere, e.g. a target inside this VPC).
#
# Tags are immutable: the task definition names the driver image by tag, and with
# immutable tags that tag always means the same bits, so every task of a test, and a
# task definition revision reapplied later, runs exactly the image that was deployed.
# scripts/deploy.sh tags images by commit and skips the push when the tag already exists.

locals {
  images = toset(["driver", "target", "orchestrator"])
}

resource "aws_ecr_repository" "this" {
  for_each = local.images

  name                 = "${var.name_prefix}/${each.key}"
  image_tag_mutability = "IMMUTABLE"
  force_delete         = true # `make destroy` removes the images with the repository

  image_scanning_configuration {
    scan_on_push = true # basic scanning, no charge
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = aws_kms_key.this.arn
  }
}

resource "aws_ecr_lifecycle_policy" "this" {
  for_each = aws_ecr_repository.this

  repository = each.value.name
  policy = jsonencode({
    rules = [
      {
        rulePriority = 1
        description  = "Untagged layers of superseded pushes go after a day"
        selection = {
          tagStatus   = "untagged"
          countType   = "sinceImagePushed"
          countUnit   = "days"
          countNumber = 1
        }
        action = { type = "expire" }
      },
      {
        rulePriority = 2
        description  = "Keep the newest ${var.ecr_keep_images} images"
        selection = {
          tagStatus   = "any"
          countType   = "imageCountMoreThan"
          countNumber = var.ecr_keep_images
        }
        action = { type = "expire" }
      },
    ]
  })
}
