"""Guide page: a six-step tour for teaching — shift → DSP → unary/binary → prune → compare → explain —
one step per screen (``?tour=``), each with a deep link into the real page with preset settings, and
a glossary. The content lives in :mod:`app.guide`."""

from __future__ import annotations

import streamlit as st

from app import guide, nav

st.title("Guide — the method in six steps")
st.markdown("A short tour for a lecture or a first visit: each step says what to look at and opens the real page "
            "with the settings that show it. Use the buttons or the step picker; the step is in the URL (?tour=).")

names = [s.name for s in guide.STEPS]
if st.session_state.get("tour") not in (None, *names):
    del st.session_state["tour"]  # an old or mistyped link: the first step
name = st.radio("Step", names, key="tour", bind="query-params", horizontal=True,
                help="shift → DSP → sensitivity → prune → compare → explain")
number = names.index(name) + 1
step = guide.STEPS[number - 1]

st.subheader(step.title)
st.markdown(step.text)
st.page_link(nav.page(step.page), label=step.link_label, icon=":material/arrow_forward:", query_params=step.query)
if step.try_this:
    st.caption(f"Try this: {step.try_this}")

back, _, forward = st.columns([1, 4, 1])
def _go(to: str) -> None:
    st.session_state["tour"] = to  # a callback runs before the rerun, when the radio may still be set


if number > 1:
    back.button("← previous", key="guide_prev", on_click=_go, args=(names[number - 2],))
if number < len(names):
    forward.button("next →", key="guide_next", on_click=_go, args=(names[number],))

st.divider()
st.subheader("Glossary")
for term, text in guide.GLOSSARY.items():
    st.markdown(f"**{term}** — {text}")
