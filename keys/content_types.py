"""The content types of what an envelope carries (docs/PROTOCOL.md sections 4.6 and 10):
plain strings, in a module light enough for the CLI to import at start."""

from __future__ import annotations

CASE_NOTICE_CONTENT_TYPE = "application/vnd.liaison.case-notice.v1+proto"
ACKNOWLEDGEMENT_CONTENT_TYPE = "application/vnd.liaison.acknowledgement.v1+proto"
REPLY_CONTENT_TYPE = "application/vnd.liaison.reply.v1+proto"
CARD_UPDATE_CONTENT_TYPE = "application/vnd.liaison.card-update.v1+proto"
FORWARD_CONTENT_TYPE = "application/vnd.liaison.forward.v1+proto"
