"""Label Studio as regionscribe sees it: its REST API, the project's labeling config, its results read and
predictions written, region shapes, the image fetcher, and the webhook this backend needs."""
