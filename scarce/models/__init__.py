"""Models: timm backbones and their layer groups, upstream models, radiomics features."""
