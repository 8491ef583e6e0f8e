"""compress lab: the Streamlit app. `streamlit run app.py` (or `bash run.sh`).

The one entry of every URL (see compress_lab_app/entry.py): the refusal to serve beyond this
computer, the navigation, the sidebar and the user's place, then the page."""

from __future__ import annotations

import streamlit as st

from compress_lab_app.entry import refuse_unless_loopback, through_entry
from compress_lab_app.pages_index import PAGES, home_page, sidebar_glance
from compress_lab_app.place import keep_place

st.set_page_config(page_title="compress lab", page_icon=":material/compress:", layout="wide")
refuse_unless_loopback()  # before any page, navigation or sidebar exists

navigation = st.navigation([st.Page(home_page, title="Home", icon=":material/home:", default=True),
                            *[st.Page(p.path, title=p.title, icon=p.icon, url_path=p.url) for p in PAGES]])
with keep_place():
    sidebar_glance()
    with through_entry():
        navigation.run()
