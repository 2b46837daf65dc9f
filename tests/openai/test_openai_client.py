"""The openai client, unchanged, against kvgate serve. Usage: test_openai_client.py BASE_URL KEY"""
import sys
import unittest

import openai

BASE, KEY = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=120)
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


class OpenAIClient(unittest.TestCase):
    def test_models_list(self):
        models = client.models.list()
        self.assertEqual(len(models.data), 1)
        self.assertTrue(models.data[0].id)

    def test_chat_completion(self):
        r = client.chat.completions.create(model="any", messages=MESSAGES, max_tokens=16, temperature=0)
        self.assertEqual(r.object, "chat.completion")
        self.assertTrue(r.choices[0].message.content)
        self.assertIn(r.choices[0].finish_reason, ("stop", "length"))
        self.assertEqual(r.usage.completion_tokens, r.model_extra["timings"]["predicted_n"])

    def test_chat_stream_equals_whole_reply(self):
        whole = client.chat.completions.create(model="any", messages=MESSAGES, max_tokens=16, temperature=0)
        stream = client.chat.completions.create(model="any", messages=MESSAGES, max_tokens=16, temperature=0,
                                                stream=True, stream_options={"include_usage": True})
        text, finish, usage = "", None, None
        for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            for c in chunk.choices:
                text += c.delta.content or ""
                finish = c.finish_reason or finish
        self.assertEqual(text, whole.choices[0].message.content)
        self.assertEqual(finish, whole.choices[0].finish_reason)
        self.assertEqual(usage.completion_tokens, whole.usage.completion_tokens)

    def test_kv_policy_as_extra_body(self):
        r = client.chat.completions.create(model="any", messages=MESSAGES, max_tokens=8, temperature=0,
                                           extra_body={"kv_policy": {"name": "h2o", "budget": 8, "window": 8}})
        self.assertEqual(r.model_extra["kv_policy"]["name"], "h2o")
        self.assertLess(r.model_extra["kv"]["share_kept"], 1.0)

    def test_completion(self):
        r = client.completions.create(model="any", prompt="Once upon a time", max_tokens=8, temperature=0)
        self.assertEqual(r.object, "text_completion")
        self.assertTrue(r.choices[0].text)
        self.assertEqual(r.usage.completion_tokens, 8)

    def test_400_is_bad_request_error(self):
        with self.assertRaises(openai.BadRequestError):
            client.chat.completions.create(model="any", messages=MESSAGES, extra_body={"kv_policy": {"name": "nope"}})
        with self.assertRaises(openai.BadRequestError):
            client.chat.completions.create(model="any", messages=MESSAGES, temperature=-1)

    def test_401_is_authentication_error(self):
        bad = openai.OpenAI(base_url=BASE, api_key="wrong", max_retries=0)
        with self.assertRaises(openai.AuthenticationError):
            bad.models.list()


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
