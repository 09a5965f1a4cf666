"""Whether KASLR placed the kernel's memory regions, read in capture from each source (issue 26, item 7), and
said by the journey beside the vmemmap base as observed; "from the value alone" only where nothing was read."""

import pytest

from pagefault.capture.kaslr import KASLR_FLAG, KaslrSources, decide, unrandomised_text
from pagefault.journey.build import VMEMMAP_UNRANDOMISED, _vmemmap_alignment

CONFIG_ON = {"CONFIG_RANDOMIZE_BASE": "y", "CONFIG_RANDOMIZE_MEMORY": "y", "CONFIG_KASAN": "",
             "CONFIG_PHYSICAL_START": "0x1000000", "CONFIG_PHYSICAL_ALIGN": "0x200000"}
PLAIN_TEXT = 0xFFFF_FFFF_8100_0000


def test_boot_params_flag_decides_alone():
    assert decide(KaslrSources(loadflags=KASLR_FLAG | 1))[0] is True
    on, how = decide(KaslrSources(loadflags=1))
    assert on is False and "KASLR_FLAG clear" in how and "/sys/kernel/boot_params/data" in how


def test_nokaslr_on_the_command_line_turns_it_off():
    on, how = decide(KaslrSources(cmdline="ro quiet nokaslr console=ttyS0"))
    assert on is False and "nokaslr on /proc/cmdline" in how
    # a command line without it says nothing either way
    assert decide(KaslrSources(cmdline="ro quiet"))[0] is None


@pytest.mark.parametrize("option, value", [("CONFIG_RANDOMIZE_MEMORY", ""), ("CONFIG_KASAN", "y")])
def test_a_configuration_that_cannot_randomise_memory_says_off(option, value):
    on, how = decide(KaslrSources(config=dict(CONFIG_ON, **{option: value}), config_where="/proc/config.gz"))
    assert on is False and "/proc/config.gz" in how


def test_a_configuration_that_can_randomise_says_only_that_it_could():
    assert decide(KaslrSources(config=CONFIG_ON, config_where="/proc/config.gz"))[0] is None


def test_text_against_its_unrandomised_address():
    assert unrandomised_text(CONFIG_ON) == PLAIN_TEXT
    assert unrandomised_text({}) == PLAIN_TEXT          # the defaults: 16 MiB start and alignment
    off, how = decide(KaslrSources(config=CONFIG_ON, config_where="c", text=PLAIN_TEXT))
    assert off is False and "the unrandomised 0xffffffff81000000" in how
    assert decide(KaslrSources(config=CONFIG_ON, config_where="c", text=PLAIN_TEXT + (0x3A << 24)))[0] is True
    assert decide(KaslrSources(text=0))[0] is None      # kallsyms hides addresses from non-root: unknown


def test_the_strongest_source_wins_and_every_source_is_named():
    # a configuration built for KASLR, booted by a loader that set no KASLR_FLAG (Firecracker starts the kernel so)
    src = KaslrSources(loadflags=0, cmdline="quiet", config=CONFIG_ON, config_where="/proc/config.gz", text=PLAIN_TEXT)
    on, how = decide(src)
    assert on is False
    for word in ("KASLR_FLAG clear", "no nokaslr", "CONFIG_RANDOMIZE_MEMORY=y", "_text at 0xffffffff81000000"):
        assert word in how


def test_nothing_read_is_unknown():
    assert decide(KaslrSources()) == (None, "")


BASE = VMEMMAP_UNRANDOMISED[4]


def test_the_journey_says_kaslr_as_observed_and_value_alone_only_without_a_setting():
    said = _vmemmap_alignment(BASE, 4, False, "KASLR_FLAG clear in boot_params' loadflags")
    assert "KASLR off (observed: KASLR_FLAG clear" in said and "value alone" not in said
    said = _vmemmap_alignment(BASE + (5 << 30), 4, True, "KASLR_FLAG set")
    assert "KASLR on (observed: KASLR_FLAG set)" in said and "disagree" not in said
    assert "disagree" in _vmemmap_alignment(BASE + (5 << 30), 4, False, "nokaslr on /proc/cmdline")
    assert "from the value alone" in _vmemmap_alignment(BASE, 4)


@pytest.mark.live
def test_the_hosts_kaslr_is_read_and_agrees_with_its_kernel_text():
    """Live: on this machine (root) at least one source is read, and the verdict agrees with where the kernel's
    text lies (a kernel moved by KASLR has moved its text too; one left in place has KASLR off)."""
    import os

    from pagefault.capture.kaslr import read_sources
    if os.geteuid() != 0 or os.uname().machine != "x86_64":
        pytest.skip("needs root on x86-64 (kallsyms addresses, boot_params)")
    src = read_sources()
    on, how = decide(src)
    assert on is not None and how
    if src.text:
        assert on == (src.text != unrandomised_text(src.config)), how
