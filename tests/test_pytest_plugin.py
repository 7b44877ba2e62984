"""The pytest plugin, as a bot author meets it: through pytest's entry point, in a fresh run."""

from __future__ import annotations

import importlib.metadata
import textwrap

import pytest

pytest_plugins = ["pytester"]

BOT = textwrap.dedent(
    """
    import linebot.v3
    import pytest
    from linebot.v3.messaging import ApiClient, MessagingApi, ReplyMessageRequest, TextMessage
    from linebot.v3.webhook import WebhookParser
    from linebot.v3.webhooks import MessageEvent, StickerMessageContent, TextMessageContent

    from line_markread import WebhookHandler
    from line_markread.testing import sign, sticker_event, text_event


    def make_bot(platform, secret, *, marking=True, stickers_opt_out=True):
        if marking:
            handler = WebhookHandler(secret, configuration=platform.configuration())
        else:
            handler = linebot.v3.WebhookHandler(secret)

        @handler.add(MessageEvent, message=TextMessageContent)
        def echo(event):
            with ApiClient(platform.configuration()) as client:
                MessagingApi(client).reply_message(
                    ReplyMessageRequest(
                        reply_token=event.reply_token,
                        messages=[TextMessage(text=event.message.text)],
                    )
                )

        options = {"mark_as_read": not stickers_opt_out} if marking else {}

        @handler.add(MessageEvent, message=StickerMessageContent, **options)
        def on_sticker(event):
            pass

        return handler
    """
)


@pytest.fixture
def bot_tests(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(
        """
        [pytest]
        filterwarnings = error
        asyncio_default_fixture_loop_scope = function
        """
    )
    pytester.makepyfile(bot=BOT)
    return pytester


def test_the_plugin_is_registered_as_a_pytest11_entry_point() -> None:
    (entry,) = [
        e for e in importlib.metadata.entry_points(group="pytest11") if e.name == "line_markread"
    ]
    assert entry.value == "line_markread.testing._pytest_plugin"


def test_fixtures_are_listed_with_their_docs(bot_tests: pytest.Pytester) -> None:
    result = bot_tests.runpytest_subprocess("--fixtures", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(
        [
            "line_platform -- *",
            "*FakeLinePlatform*",
            "line_channel_secret -- *",
            "*channel secret*",
            "line_webhook -- *",
            "*WebhookFactory*",
        ],
        consecutive=False,
    )


def test_line_platform_runs_for_one_test(bot_tests: pytest.Pytester) -> None:
    bot_tests.makepyfile(
        """
        import pytest

        seen = []

        def test_running(line_platform):
            assert line_platform.url.startswith("http://127.0.0.1:")
            assert line_platform.requests() == []
            seen.append(line_platform)

        def test_a_new_one_each_test_and_the_last_one_stopped(line_platform):
            assert line_platform is not seen[0]
            with pytest.raises(RuntimeError, match="not running"):
                seen[0].url
        """
    )
    bot_tests.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_line_webhook_signs_for_line_channel_secret(bot_tests: pytest.Pytester) -> None:
    bot_tests.makepyfile(
        """
        from linebot.v3.webhook import WebhookParser
        from line_markread.testing import sign, text_event

        def test_signed(line_webhook, line_channel_secret):
            event = text_event("hi")
            webhook = line_webhook(event)
            assert webhook.headers["X-Line-Signature"] == webhook.signature
            assert webhook.headers["Content-Type"] == "application/json"
            (parsed,) = WebhookParser(line_channel_secret).parse(webhook.body, webhook.signature)
            assert parsed.message.text == "hi"
            assert webhook.events == (event,)
            assert line_webhook.events == [event]
            assert line_webhook.sign("x") == sign("x", line_channel_secret)

        def test_verify_request_has_no_events(line_webhook):
            assert '"events":[]' in line_webhook().body
        """
    )
    bot_tests.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_line_channel_secret_can_be_overridden(bot_tests: pytest.Pytester) -> None:
    bot_tests.makeconftest(
        """
        import pytest

        @pytest.fixture
        def line_channel_secret():
            return "the-secret-my-bot-reads"
        """
    )
    bot_tests.makepyfile(
        """
        from line_markread.testing import sign

        def test_overridden(line_webhook):
            webhook = line_webhook()
            assert webhook.signature == sign(webhook.body, "the-secret-my-bot-reads")
        """
    )
    bot_tests.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_marked_before_replied_passes_for_a_marking_bot_and_fails_for_the_sdks(
    bot_tests: pytest.Pytester,
) -> None:
    bot_tests.makepyfile(
        """
        import pytest
        from line_markread.testing import sticker_event, text_event
        from bot import make_bot

        def test_marking_bot(line_platform, line_webhook, line_channel_secret):
            handler = make_bot(line_platform, line_channel_secret)
            sticker = sticker_event()
            webhook = line_webhook(text_event("one"), text_event("two", group_id="Cg"), sticker)
            handler.handle(webhook.body, webhook.signature)
            handler.close()
            line_webhook.assert_marked_before_replied(line_platform)
            line_webhook.assert_not_marked(line_platform, sticker)

        def test_the_sdks_own_handler_replies_unread(
            line_platform, line_webhook, line_channel_secret
        ):
            handler = make_bot(line_platform, line_channel_secret, marking=False)
            webhook = line_webhook(text_event("hi"))
            handler.handle(webhook.body, webhook.signature)
            line_webhook.assert_marked_before_replied(line_platform)

        def test_nothing_replied_is_not_a_pass(line_platform, line_webhook, line_channel_secret):
            handler = make_bot(line_platform, line_channel_secret)
            webhook = line_webhook(sticker_event())
            handler.handle(webhook.body, webhook.signature)
            handler.close()
            line_webhook.assert_marked_before_replied(line_platform)

        def test_a_marked_opt_out_is_caught(line_platform, line_webhook, line_channel_secret):
            handler = make_bot(line_platform, line_channel_secret, stickers_opt_out=False)
            sticker = sticker_event()
            webhook = line_webhook(sticker)
            handler.handle(webhook.body, webhook.signature)
            handler.close()
            line_webhook.assert_not_marked(line_platform, sticker)
        """
    )
    result = bot_tests.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=3)
    result.stdout.fnmatch_lines(
        [
            "*1 of 1 replies came before the message was marked read*",
            "*replied to text message * in user U* before it was marked read*",
            "*no reply to any of the 1 message(s) expected to be marked: nothing to check*",
            "*mark-as-read requests were sent for: sticker message *",
        ],
        consecutive=False,
    )
