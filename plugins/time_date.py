"""Current time, date and weekday, and the Chinese lunar calendar, from the server's clock.

No network: the local clock, converted to the configured `timezone` (IANA name such as
Asia/Shanghai; empty means the server's own zone). Lunar dates come from lunar-python.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

from lunar_python import Solar
from pydantic import BaseModel, ConfigDict, field_validator

from server.plugin_api import ToolContext, ToolResult, settings_of, tool

WEEKDAYS_ZH = ("星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日")
WEEKDAYS_EN = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # IANA time zone of the users, e.g. Asia/Shanghai; empty: the server's local zone.
    timezone: str = ""

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        value = value.strip()
        if value:
            try:
                zoneinfo.ZoneInfo(value)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Asia/Shanghai)") from None
        return value


def now_in(settings: Settings) -> dt.datetime:
    zone = settings.timezone or ""
    now = dt.datetime.now().astimezone()  # the local clock with the server's zone
    return now.astimezone(zoneinfo.ZoneInfo(zone)) if zone else now


@tool(timeout=3)
async def get_time_and_date(ctx: ToolContext) -> dict:
    """Get the current local time, today's date and the day of the week.
    Call only when the user asks what time it is, today's date or weekday, or needs them
    for a calculation (e.g. "几点了", "今天星期几", "what's the date").
    """
    now = now_in(settings_of(ctx, Settings))
    zh = ctx.language.startswith("zh")
    return {
        "time": now.strftime("%H:%M"),
        "date": now.strftime("%Y-%m-%d"),
        "weekday": (WEEKDAYS_ZH if zh else WEEKDAYS_EN)[now.weekday()],
        "timezone": settings_of(ctx, Settings).timezone or now.tzname() or "",
    }


def lunar_info(day: dt.date) -> dict:
    solar = Solar.fromYmd(day.year, day.month, day.day)
    lunar = solar.getLunar()
    month = lunar.getMonth()  # negative for a leap month
    info: dict = {
        "date": day.isoformat(),
        "lunar_date": f"{lunar.getYearInGanZhi()}年{lunar.getMonthInChinese()}月{lunar.getDayInChinese()}",
        "lunar_month": abs(month),
        "lunar_day": lunar.getDay(),
        "leap_month": month < 0,
        "zodiac": lunar.getYearShengXiao(),
        "ganzhi": f"{lunar.getYearInGanZhi()}年 {lunar.getMonthInGanZhi()}月 {lunar.getDayInGanZhi()}日",
    }
    festivals = list(lunar.getFestivals()) + list(solar.getFestivals())
    if festivals:
        info["festivals"] = festivals
    if lunar.getJieQi():
        info["solar_term"] = lunar.getJieQi()
    nxt = lunar.getNextJieQi()
    info["next_solar_term"] = f"{nxt.getName()} {nxt.getSolar().toYmd()}"
    info["yi"] = list(lunar.getDayYi())[:6]  # 宜: what the almanac favours today
    info["ji"] = list(lunar.getDayJi())[:6]  # 忌: what it advises against
    return info


@tool(timeout=3)
async def get_lunar_date(ctx: ToolContext, date: str = "") -> dict | ToolResult:
    """Get the Chinese lunar (农历) calendar for today or a given day: lunar month and day,
    zodiac year (生肖), gan-zhi, festivals, solar terms (节气) and the almanac's 宜/忌.
    Call only when the user asks about the lunar calendar, 农历, 生肖, 节气 or 黄历.

    Args:
        date: the Gregorian date as YYYY-MM-DD; leave empty for today.
    """
    if date.strip():
        try:
            day = dt.date.fromisoformat(date.strip())
        except ValueError:
            return ToolResult.error(f"date {date!r} is not YYYY-MM-DD; call again with e.g. 2025-10-01")
    else:
        day = now_in(settings_of(ctx, Settings)).date()
    if not 1901 <= day.year <= 2099:
        return ToolResult.error("the lunar calendar is only available for 1901-2099")
    return lunar_info(day)
