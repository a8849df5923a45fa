"""Outbound network traffic: where a link may point, the guarded proxy every connection
goes through, downloading links (yt-dlp) and delivering webhooks."""
