"""What the file datasets share: reading images and metadata, the image store, the folder
format, and mechanism-of-action labels."""
